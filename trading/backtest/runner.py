"""Run the engine over a range of trading days for one ``BacktestRun``.

The engine, OMS, risk gate and paper broker are the production classes. What
a backtest changes, and why:

- its own account (``backtest-<id>``): orders, positions, trades, refusals,
  breakers, the paper account and the trading state are all keyed on the
  account, so nothing mixes with the live or paper book;
- its own signal keys: ``Signal.key`` is unique across accounts and the
  strategy derives keys from the instrument and time, so two runs over the
  same day would share rows. A thin wrapper prefixes keys on the way into the
  engine (``bt<id>:``) and strips them on the way back to the strategy, which
  never knows;
- strategy state starts empty and is carried from day to day in memory, never
  written over the live ``Strategy.state``; parameters are frozen at the start
  (admin edits during a run do not leak into it);
- deterministic client order ids (``BT<id>N<n>``), so the decision log can be
  compared across runs;
- no storage writer: simulated data never lands in the market-data tables a
  replay would later read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async

from marketdata.book import QuoteBook
from marketdata.feeds.base import Feed, FeedItem
from marketdata.models import ChainQuote, ExchangeHoliday
from quanthub.clock import IST, SESSION_CLOSE, SESSION_OPEN, SimulatedClock
from trading.engine.engine import Engine, EngineStats
from trading.orders.root import build_order_path

log = logging.getLogger(__name__)

SOURCES = ("auto", "replay", "sim", "bars")


def account_for(run_id: int) -> str:
    return f"backtest-{run_id}"


def signal_prefix(run_id: int) -> str:
    return f"bt{run_id}:"


def order_id_prefix(run_id: int) -> str:
    # [A-Z0-9] only, ≤ 25 characters with the counter: a valid Dhan correlation id.
    # The "N" separator keeps BT12N… from being a prefix of BT123N….
    return f"BT{run_id}N"


def trading_days(date_from: dt.date, date_to: dt.date, holidays: Iterable[dt.date] = ()) -> list[dt.date]:
    """Weekdays from ``date_from`` to ``date_to`` inclusive, without exchange holidays."""
    closed = set(holidays)
    days, day = [], date_from
    while day <= date_to:
        if day.weekday() < 5 and day not in closed:
            days.append(day)
        day += dt.timedelta(days=1)
    return days


def nse_holidays(date_from: dt.date, date_to: dt.date) -> list[dt.date]:
    return list(
        ExchangeHoliday.objects.filter(exchange="NSE", date__gte=date_from, date__lte=date_to).values_list(
            "date", flat=True
        )
    )


def has_recorded_chains(day: dt.date) -> bool:
    start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
    return ChainQuote.objects.filter(received_at__gte=start, received_at__lt=start + dt.timedelta(days=1)).exists()


# --- signal-key namespace -----------------------------------------------------------------


class NamespacedStrategy:
    """Wraps a strategy so the engine sees ``prefix + key`` and the strategy its own keys."""

    def __init__(self, inner: Any, prefix: str) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)

    def _out(self, key: str | None) -> str | None:
        return f"{self._prefix}{key}" if key else key

    def _in(self, key: str | None) -> str | None:
        return key[len(self._prefix) :] if key and key.startswith(self._prefix) else key

    def _intents(self, intents) -> list:
        return [dataclasses.replace(i, signal_key=self._out(i.signal_key)) for i in intents or ()]

    @property
    def transitions(self) -> list:
        return [dataclasses.replace(t, signal_key=self._out(t.signal_key)) for t in self._inner.transitions]

    def on_snapshot(self, snapshot) -> list:
        return self._intents(self._inner.on_snapshot(snapshot))

    def on_timer(self, now: dt.datetime) -> list:
        return self._intents(self._inner.on_timer(now))

    def on_fill(self, event) -> list:
        return self._intents(self._inner.on_fill(dataclasses.replace(event, signal_key=self._in(event.signal_key))))

    def on_order_update(self, update) -> list:
        return self._intents(
            self._inner.on_order_update(dataclasses.replace(update, signal_key=self._in(update.signal_key)))
        )

    def rebuild_from_book(self, orders) -> list:
        mine = [
            dataclasses.replace(o, signal_key=self._in(o.signal_key))
            for o in orders
            if o.signal_key and o.signal_key.startswith(self._prefix)
        ]
        return self._intents(self._inner.rebuild_from_book(mine))

    def on_refused(self, intent, reason: str, now: dt.datetime) -> None:
        handler = getattr(self._inner, "on_refused", None)
        if handler is not None:
            handler(dataclasses.replace(intent, signal_key=self._in(intent.signal_key)), reason, now)


class BacktestEngine(Engine):
    """The engine with the isolation described in the module docstring."""

    flatten_beside_the_loop = False  # the daily-loss flatten in place: the same prices on every run

    def __init__(
        self,
        *,
        run_id: int,
        strategies: Iterable[str],
        states: dict[str, dict],
        order_ids: Callable[[], str],
        day: dt.date,
        frozen_params: dict[str, dict] | None = None,
        **kwargs,
    ):
        self.frozen_params = frozen_params or {}  # read before the first day: the same on every day
        super().__init__(**kwargs)
        self.run_id = run_id
        self.chosen = set(strategies)
        self.states = states
        self.engine_id = f"backtest-{run_id}-{day:%Y%m%d}"
        self.oms.id_factory = order_ids

    def _load_strategies(self) -> None:
        super()._load_strategies()
        prefix = signal_prefix(self.run_id)
        kept = []
        for loaded in self.strategies:
            if loaded.key not in self.chosen:
                continue
            if loaded.key in self.frozen_params:
                cls = type(loaded.strategy)
                loaded.strategy.configure(cls.config_class.from_params(self.frozen_params[loaded.key]))
            loaded.strategy.set_state(self.states.get(loaded.key, {}))
            loaded.strategy.entries_enabled = True
            loaded.enabled = True
            loaded.strategy = NamespacedStrategy(loaded.strategy, prefix)
            kept.append(loaded)
        self.strategies = kept

    def _refresh_config(self) -> None:
        """Strategy parameters and switches are frozen for the run: the admin's edits
        during a backtest never reach it. The active risk limits are followed as a
        live engine follows them."""
        from risk.models import RiskLimits

        key = RiskLimits.objects.filter(is_active=True).values_list("pk", "version", "updated_at").first()
        if key is None or key != self._limits_key:
            self._limits = RiskLimits.active()
            self._limits_key = key
        self._limits_fresh = True

    def _persist_states(self, *, always: bool = False) -> None:
        for loaded in self.strategies:
            self.states[loaded.key] = loaded.strategy.get_state()


class _Until(Feed):
    """Ends a feed at a given time (``--minutes``); the replay feed has no end time of its own."""

    def __init__(self, feed: Feed, until: dt.datetime) -> None:
        self.feed, self.until = feed, until
        self.name = getattr(feed, "name", "feed")

    async def stream(self) -> AsyncIterator[FeedItem]:
        async for item in self.feed:
            if item.received_at > self.until:
                await self.feed.close()
                return
            yield item

    async def close(self) -> None:
        await self.feed.close()


@dataclass
class DayResult:
    day: dt.date
    source: str
    seed: int
    stats: EngineStats
    open_positions: int = 0
    trading_state: str = "ACTIVE"

    @property
    def session_start(self) -> dt.datetime:
        return dt.datetime.combine(self.day, SESSION_OPEN, tzinfo=IST)

    def as_dict(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "source": self.source,
            "seed": self.seed,
            "open_positions_at_close": self.open_positions,
            "trading_state_at_close": self.trading_state,
            **{k: v for k, v in vars(self.stats).items() if k != "tick_to_intent_ms"},
        }


@dataclass
class RunResult:
    account: str
    days: list[DayResult] = field(default_factory=list)

    @property
    def tick_to_intent_ms(self) -> list[float]:
        return [ms for d in self.days for ms in d.stats.tick_to_intent_ms]


@dataclass(frozen=True)
class Plan:
    run_id: int
    days: list[dt.date]
    seed: int
    scenario: Any  # None, "default", a path or a loaded Scenario
    strategies: tuple[str, ...]
    source: str = "auto"
    minutes: int | None = None
    # Fan-out tasks (trading.backtest.fanout): the engine class (with the task's parameters
    # bound) and whether the caller already loaded the day's instruments.
    engine_factory: Any = None
    prepared: bool = False
    # The simulator's items made ahead in a process of their own (None: when the machine
    # has a core to spare, ``marketdata.feeds.prefetch.wanted``). Fan-out tasks say False:
    # their siblings already use the other cores.
    prefetch: bool | None = None


def _source_for(day: dt.date, wanted: str) -> str:
    if wanted == "auto":
        return "replay" if has_recorded_chains(day) else "sim"
    return wanted


def _build_day(
    plan: Plan, day: dt.date, index: int, states: dict, order_ids, params: dict | None = None
) -> tuple[BacktestEngine, str, int]:
    source = _source_for(day, plan.source)
    # Day i of the range runs on seed + i: a one-day backtest with --seed N sees
    # the same market as ``run_engine --seed N --date D``, and days differ.
    seed = plan.seed + index
    start = dt.datetime.combine(day, SESSION_OPEN, tzinfo=IST)
    end = (
        start + dt.timedelta(minutes=plan.minutes)
        if plan.minutes
        else dt.datetime.combine(day, SESSION_CLOSE, tzinfo=IST)
    )
    clock = SimulatedClock(start - dt.timedelta(seconds=1))
    feed = _feed_for(plan, day, source, seed, clock, start, end)
    book = QuoteBook()
    account = account_for(plan.run_id)
    # A backtest's account is its own: nothing else sends for it, so its window stays in-process.
    orders = build_order_path(account, clock=clock, book=book, broker_name="paper", seed=seed, shared=False)
    engine = (plan.engine_factory or BacktestEngine)(
        run_id=plan.run_id,
        strategies=plan.strategies,
        states=states,
        order_ids=order_ids,
        day=day,
        frozen_params=params,
        feed=feed,
        broker=orders.broker,
        clock=clock,
        book=book,
        account=account,
        writer=None,
        orders=orders,
    )
    return engine, source, seed


def _frozen_params(keys) -> dict[str, dict]:
    """Each chosen strategy's parameters as they stand when the run starts."""
    from trading.models import Strategy

    return {row.key: dict(row.params or {}) for row in Strategy.objects.filter(key__in=list(keys))}


def _feed_for(
    plan: Plan, day: dt.date, source: str, seed: int, clock: SimulatedClock, start: dt.datetime, end: dt.datetime
) -> Feed:
    """The day's market: the simulator, a recorded day (replay) or stored minute bars."""
    from marketdata.demo import ensure_demo_instruments
    from marketdata.feeds.bars import BarFeed
    from marketdata.feeds.replay import ReplayFeed
    from marketdata.feeds.simulator import SimulatorFeed

    if source == "sim":
        if not plan.prepared:
            # As run_engine does: the simulator's instruments for that day (expiries move with the date).
            ensure_demo_instruments(day)
        holidays = tuple(nse_holidays(day - dt.timedelta(days=60), day + dt.timedelta(days=60)))
        return SimulatorFeed(
            clock=clock,
            seed=seed,
            speed="max",
            scenario=plan.scenario,
            trading_day=day,
            start_time=start.time(),
            end_time=end.time(),
            holidays=holidays,
            prefetch=plan.prefetch,
        )
    if source == "bars":
        return BarFeed(date=day, clock=clock, until=end if plan.minutes else None)
    feed: Feed = ReplayFeed(date=day, clock=clock, speed="max")
    return _Until(feed, end) if plan.minutes else feed


def _closing_state(account: str) -> tuple[int, str]:
    """What the day left behind: positions carried into the next day, and a HALT (e.g. the
    daily loss breaker) that nothing lifts automatically, so later days stay halted."""
    from risk.models import TradingState
    from trading.models import Position

    open_positions = Position.objects.filter(account=account).exclude(net_quantity=0).count()
    state = TradingState.objects.filter(account=account).values_list("state", flat=True).first() or "ACTIVE"
    return open_positions, state


async def run(plan: Plan) -> RunResult:
    """Every day of the plan, one engine each, state carried over as a restarted engine would."""
    result = RunResult(account=account_for(plan.run_id))
    states: dict[str, dict] = {}
    counter = itertools.count(1)
    prefix = order_id_prefix(plan.run_id)

    def order_ids() -> str:
        return f"{prefix}{next(counter)}"

    params = await sync_to_async(_frozen_params)(plan.strategies)
    for index, day in enumerate(plan.days):
        engine, source, seed = await sync_to_async(_build_day)(plan, day, index, states, order_ids, params)
        log.info("backtest day", extra={"run": plan.run_id, "day": day.isoformat(), "source": source})
        stats = await engine.run()
        open_positions, state = await sync_to_async(_closing_state)(result.account)
        result.days.append(DayResult(day, source, seed, stats, open_positions, state))
    return result
