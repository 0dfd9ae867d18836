"""A seeded, deterministic NSE index-options market.

Per underlying: the index follows a jump-diffusion whose volatility follows
India VIX and an intraday U-shape; the future is the index carried at the
risk-free rate; VIX mean-reverts towards realised volatility. The option
chain (±N strikes around ATM of the nearest expiry) is priced by
Black-Scholes from a volatility smile, with bid/ask spreads that widen away
from ATM and in fast markets, prices on the ₹0.05 tick and top-of-book
sizes; volume and OI are stochastic with an intraday profile. Scenario
events (``marketdata.scenarios``) inject informed flow, VIX spikes, feed
gaps and bad ticks.

It emits an option-chain snapshot every 3 s per underlying and LTP ticks
(index, future, India VIX) every second of the engine's clock, and, half a
second after each second's ticks, a ``QuoteSnapshot`` of each underlying's
candidate contracts (ATM ± 3 strikes, CE and PE; the same prices the chain
would show at that moment), as fast as the consumer takes them
(``speed="max"``) or at N× real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from marketdata import greeks, synthetic
from marketdata.feeds import prefetch as prefetching
from marketdata.feeds.base import CE, PE, ROW_ARRAYS, ChainSnapshot, Feed, FeedItem, LtpTick, QuoteSnapshot
from marketdata.scenarios import Event, Scenario
from quanthub.clock import IST, SESSION_CLOSE, SESSION_OPEN, Clock, SimulatedClock

TICK = synthetic.OPTION_TICK_PAISE / 100  # the options' tick in this synthetic market
RATE = 0.065
TRADING_SECONDS_PER_YEAR = 252 * 6.25 * 3600
CHAIN_EVERY_S = 3
QUOTE_STRIKES_EACH_SIDE = 3  # candidate contracts quoted every second: ATM ± 3 strikes, CE and PE
QUOTE_OFFSET = dt.timedelta(milliseconds=500)  # quotes land between the whole-second ticks
IV_MULTIPLIER = {"NIFTY": 1.0, "BANKNIFTY": 1.2}
JUMPS_PER_DAY = 2.0


def _round_tick(values: np.ndarray, tick: float = TICK) -> np.ndarray:
    # The second rounding gives the double nearest to the two-decimal price, so
    # prices survive a round trip through integer paise unchanged.
    return np.round(np.round(values / tick) * tick, 2)


def _round_tick_one(value: float, tick: float) -> float:
    """``_round_tick`` of one price, bit for bit, without numpy's per-call cost: both
    roundings are half to even (``np.round`` to 2 places scales by 100, rounds, divides)."""
    return round(round(value / tick) * tick * 100.0) / 100.0


def _intraday_shape(minutes_from_open: float) -> float:
    """Volatility and volume are high at the open, low at midday, up into the close."""
    x = minutes_from_open / 375.0
    return 0.75 + 0.9 * math.exp(-x / 0.06) + 0.45 * x**4


@functools.lru_cache(maxsize=16)
def _previous_session_vix(seed: int, trading_day: dt.date, underlyings: tuple[str, ...]) -> tuple:
    day = trading_day - dt.timedelta(days=1)
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return tuple(SimulatorFeed(seed=seed + 1_000_003, trading_day=day, underlyings=underlyings).vix_path())


def _mean_of(n: int):
    """``np.mean`` of n floats, bit for bit (numpy adds a0 + (a1 + a2 + …) for short rows)."""
    if n == 1:
        return lambda values: values[0]
    if n == 2:
        return lambda values: (values[0] + values[1]) / 2
    return lambda values: float(np.mean(values))


@dataclass(slots=True)
class InjectedEvent:
    """What the simulator actually injected (resolved strikes and security ids)."""

    at: dt.datetime
    type: str
    underlying: str = ""
    security_id: str = ""
    strike: float = 0.0
    option_type: str = ""
    params: dict = field(default_factory=dict)


@dataclass(slots=True)
class _Flow:
    row: int  # index into the underlying's full contract arrays
    start_s: float
    jump: float
    follow: float
    follow_s: float
    oi_per_interval: float
    oi_start_s: float
    oi_end_s: float


class _Market:
    """One underlying's state; all contracts of the nearest expiry, by strike."""

    def __init__(self, spec: synthetic.UnderlyingSpec, contracts, expiry: dt.date, rng: np.random.Generator):
        self.spec = spec
        self.symbol = spec.symbol
        self.rng = rng
        self.expiry = expiry
        self.expiry_close = dt.datetime.combine(expiry, SESSION_CLOSE, tzinfo=IST)
        options = sorted(
            (c for c in contracts if c.underlying == spec.symbol and c.expiry == expiry and c.kind in ("CE", "PE")),
            key=lambda c: (c.strike, c.kind),
        )
        strikes = sorted({c.strike for c in options})
        self.strikes = np.array(strikes, dtype=np.float64)
        ids = {(c.strike, c.kind): c.security_id for c in options}
        n = len(strikes)
        # Full arrays: row 2*i is strike i's CE, row 2*i+1 its PE.
        self.security_id = np.array([ids[(k, t)] for k in strikes for t in ("CE", "PE")], dtype="U20")
        self.strike = np.repeat(self.strikes, 2)
        self.option_type = np.tile(np.array([CE, PE], dtype=np.int8), n)
        self.future = next(c for c in contracts if c.underlying == spec.symbol and c.kind == "FUT")
        self.spot = spec.reference_spot * float(np.exp(rng.normal(0, 0.002)))
        self.prev_close_spot = self.spot
        self.last_return = 0.0
        self.realised_var = (0.13**2) / TRADING_SECONDS_PER_YEAR
        dist = np.abs(self.strike - self.spot) / spec.strike_step
        self.volume_rate = 2.0 + 25.0 * np.exp(-0.5 * (dist / 6.0) ** 2)  # lots per 3 s at midday
        self.oi = (spec.lot_size * np.round(2000 + 30000 * np.exp(-0.5 * (dist / 8.0) ** 2))).astype(np.int64)
        self.prev_oi = self.oi.copy()
        self.volume = np.zeros(2 * n, dtype=np.int64)
        self.flows: list[_Flow] = []
        self.pending_bad: list[Event] = []

    def step_spot(self, sigma: float, shape: float = 1.0) -> None:
        dt_years = 1.0 / TRADING_SECONDS_PER_YEAR
        ret = sigma * math.sqrt(dt_years) * self.rng.standard_normal() - 0.5 * sigma * sigma * dt_years
        if self.rng.random() < JUMPS_PER_DAY / 22500.0:
            ret += self.rng.normal(0.0, 0.0025)
        self.spot *= math.exp(ret)
        self.last_return = ret
        # Realised volatility (what VIX drifts toward) is deseasonalised (VIX is a 30-day
        # view: it does not follow the intraday U-shape, so it does not climb at every
        # open) and winsorised at 4σ of a second's return (a rare index jump is a level
        # shift; its square dominating the average made VIX climb several points after
        # every unscripted jump).
        cap = 16.0 * sigma * sigma * dt_years
        self.realised_var = 0.995 * self.realised_var + 0.005 * min(ret * ret, cap) / (shape * shape)

    @property
    def realised_vol(self) -> float:
        return math.sqrt(self.realised_var * TRADING_SECONDS_PER_YEAR)

    def future_price(self, now: dt.datetime) -> float:
        years = max((dt.datetime.combine(self.future.expiry, SESSION_CLOSE, tzinfo=IST) - now).total_seconds(), 0)
        return self.spot * math.exp(RATE * years / (365 * 86400))


class SimulatorFeed(Feed):
    name = "sim"

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        seed: int = 7,
        speed: float | str = "max",
        scenario: Scenario | str | dict | None = None,
        underlyings: tuple[str, ...] = ("NIFTY", "BANKNIFTY"),
        trading_day: dt.date | None = None,
        start_time: dt.time = SESSION_OPEN,
        end_time: dt.time = SESSION_CLOSE,
        strikes_each_side: int = 10,
        holidays: tuple[dt.date, ...] = (),
        prefetch: bool | None = None,
    ):
        if speed != "max" and (not isinstance(speed, int | float) or speed <= 0):
            raise ValueError(f"speed must be 'max' or a positive number, got {speed!r}")
        unknown = [u for u in underlyings if u not in synthetic.SYNTHETIC_MARKET]
        if unknown:
            raise ValueError(f"The simulator has no underlying {', '.join(unknown)}")
        self.clock = clock
        self.seed = seed
        self.speed = speed
        self.scenario = scenario if isinstance(scenario, Scenario) else Scenario.load(scenario)
        self.trading_day = trading_day or (clock.today() if clock else dt.date.today())  # noqa: DTZ011
        self.start = dt.datetime.combine(self.trading_day, start_time, tzinfo=IST)
        self.end = dt.datetime.combine(self.trading_day, end_time, tzinfo=IST)
        self.session_open = dt.datetime.combine(self.trading_day, SESSION_OPEN, tzinfo=IST)
        self.strikes_each_side = strikes_each_side
        # At full speed, generate the items ahead in a process of their own
        # (``marketdata.feeds.prefetch``): None decides by the session and the machine.
        self.prefetch = prefetch
        self._prefetch: prefetching.Prefetch | None = None
        self._prefetched_state: dict | None = None
        self.injected: list[InjectedEvent] = []
        self._closed = False
        contracts = synthetic.build_master(self.trading_day, holidays)
        root = np.random.SeedSequence(seed)
        # Children are keyed by index: adding the quotes' stream left the others as they were.
        streams = root.spawn(len(underlyings) + 2)
        self._rng = np.random.default_rng(streams[len(underlyings)])
        self._quote_rng = np.random.default_rng(streams[len(underlyings) + 1])
        self.markets: dict[str, _Market] = {}
        for symbol, stream in zip(underlyings, streams, strict=False):
            spec = synthetic.SYNTHETIC_MARKET[symbol]
            expiry = min(c.expiry for c in contracts if c.underlying == symbol and c.kind == "CE")
            self.markets[symbol] = _Market(spec, contracts, expiry, np.random.default_rng(stream))
        self.vix = 13.0 + float(self._rng.normal(0, 0.5))
        for market in self.markets.values():  # realised volatility starts where VIX says it is
            market.realised_var = (self.vix / 100 * IV_MULTIPLIER[market.symbol] * 0.8) ** 2 / TRADING_SECONDS_PER_YEAR
        self._vix_extra = 0.0
        self._vix_decay_s = 600.0
        self._gap_until: dt.datetime | None = None
        self._seq = 0
        self._at: dt.datetime | None = None  # the last second fully generated
        self._grid = self.start  # chains every 3 s from here
        self._applied_until: dt.datetime | None = None  # scenario events up to here are in the state

    @classmethod
    def from_options(cls, *, clock=None, seed=7, speed="max", scenario=None, **options) -> SimulatorFeed:
        known = {"underlyings", "trading_day", "start_time", "end_time", "strikes_each_side", "holidays", "prefetch"}
        return cls(
            clock=clock, seed=seed, speed=speed, scenario=scenario, **{k: v for k, v in options.items() if k in known}
        )

    async def close(self) -> None:
        self._closed = True
        if self._prefetch is not None:
            self._prefetch.close()

    def __getstate__(self) -> dict:
        # What the generating process gets: the market, not the engine's clock or pipe.
        return {**self.__dict__, "clock": None, "_prefetch": None}

    # --- the stream -------------------------------------------------------------

    async def stream(self) -> AsyncIterator[FeedItem]:
        # (A feed class of a script's own cannot be rebuilt in another process.)
        ahead = type(self).__module__ != "__main__" and prefetching.wanted(
            self.prefetch, speed=self.speed, session_s=(self.end - self.start).total_seconds()
        )
        simulated = isinstance(self.clock, SimulatedClock)
        wall_start = time.monotonic()
        async with contextlib.aclosing(self._prefetched() if ahead else self._made_here()) as seconds:
            async for second, items in seconds:
                if self.speed == "max":
                    if second % 50 == 0:
                        await asyncio.sleep(0)  # let other tasks (the web server) breathe
                else:
                    delay = wall_start + second / float(self.speed) - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                for item in items:
                    if simulated and item.received_at > self.clock.now():
                        self.clock.set(item.received_at)
                    yield item

    async def _made_here(self) -> AsyncIterator[tuple[int, list[FeedItem]]]:
        # A closed stream steps no further second: the state a restart reads is that of the
        # last second handed over.
        seconds = self._seconds(self.start, self.end)
        while not self._closed and (entry := next(seconds, None)) is not None:
            yield entry

    async def _prefetched(self) -> AsyncIterator[tuple[int, list[FeedItem]]]:
        """``_seconds`` made in another process (``marketdata.feeds.prefetch``): the same
        items in the same order. The state (for a restart) is that of the last batch
        handed over whole: it is taken when the stream comes back for the next second."""
        self._prefetch = source = prefetching.Prefetch(self)
        try:
            async for batch, state, injected, _last in source.batches():
                self.injected.extend(injected)
                for entry in batch:
                    if self._closed:
                        return
                    yield entry
                self._prefetched_state = state
        finally:
            source.close()

    def run_sync(self):
        """The same items without an event loop (for recording and benchmarks)."""
        yield from self._generate(self.start, self.end)

    def _generate(self, start: dt.datetime, end: dt.datetime):
        for _, items in self._seconds(start, end):
            yield from items

    def _seconds(self, start: dt.datetime, end: dt.datetime):
        """(second from ``start``, its items) for every second with items (a feed gap has none)."""
        total = int((end - start).total_seconds())
        events = self._events_from(start)
        for second in range(total + 1):
            now = start + dt.timedelta(seconds=second)
            while events and dt.datetime.combine(self.trading_day, events[0].at, tzinfo=IST) <= now:
                self._apply(events.pop(0), now)
            self._step(now)
            self._at = now
            if self._gap_until is not None and now < self._gap_until:
                continue
            yield second, self._items(now, with_chain=self._chain_due(now)) + self._quotes(now + QUOTE_OFFSET)

    # --- resuming a session -------------------------------------------------------

    def _chain_due(self, now: dt.datetime) -> bool:
        # On the stream's own 3-second grid: a resumed stream keeps the one it had.
        return int((now - self._grid).total_seconds()) % CHAIN_EVERY_S == 0

    def _events_from(self, start: dt.datetime) -> list[Event]:
        """Scenario events still to come: one at or before the state's last second
        already acted (its effect is in the market state); one before a resumed
        start is not replayed."""
        done = self._applied_until or (start - dt.timedelta(seconds=1))
        return [e for e in self.scenario.events if dt.datetime.combine(self.trading_day, e.at, tzinfo=IST) > done]

    def get_state(self) -> dict | None:
        """The market as of the last second generated: spot, VIX, volume, OI, the
        informed flows under way, the random streams. JSON-able. While the items are
        generated in another process: that process's state as of the last batch handed
        over whole (a restart from it brings the market forward to where it resumes)."""
        if self._prefetched_state is not None:
            return self._prefetched_state
        if self._at is None:
            return None

        def rng(g: np.random.Generator) -> dict:
            state = g.bit_generator.state
            inner = state["state"]
            return {**state, "state": {"state": str(inner["state"]), "inc": str(inner["inc"])}}

        return {
            "at": self._at.isoformat(),
            "grid": self._grid.isoformat(),
            "seed": self.seed,
            "day": self.trading_day.isoformat(),
            "vix": self.vix,
            "vix_extra": self._vix_extra,
            "vix_decay_s": self._vix_decay_s,
            "gap_until": self._gap_until.isoformat() if self._gap_until else None,
            "seq": self._seq,
            "rng": rng(self._rng),
            "quote_rng": rng(self._quote_rng),
            "markets": {
                m.symbol: {
                    "spot": m.spot,
                    "prev_close_spot": m.prev_close_spot,
                    "last_return": m.last_return,
                    "realised_var": m.realised_var,
                    "oi": m.oi.tolist(),
                    "prev_oi": m.prev_oi.tolist(),
                    "volume": m.volume.tolist(),
                    "flows": [dataclasses.asdict(f) for f in m.flows],
                    "pending": [{"at": e.at.isoformat(), "type": e.type, "params": e.params} for e in m.pending_bad],
                    "rng": rng(m.rng),
                }
                for m in self.markets.values()
            },
        }

    def resume(self, at: dt.datetime, state: dict | None = None) -> dt.datetime:
        """Carry the session on from ``at`` (a restart on the same day) instead of
        the open: with the stored ``state`` the market is exactly where it was,
        brought forward silently to ``at`` if the state is older; without one,
        the session so far is generated silently (same seed, same market). Either
        way no scenario event before ``at`` fires again. Returns the first second
        the stream yields (never before the state's own time)."""
        at = max(at.astimezone(IST).replace(microsecond=0), self.session_open)
        usable = (
            state is not None
            and state.get("seed") == self.seed
            and state.get("day") == self.trading_day.isoformat()
            and set(state.get("markets", {})) == set(self.markets)
        )
        if usable:
            self._restore(state)
            at = max(at, self._at + dt.timedelta(seconds=1))
            start = self._at + dt.timedelta(seconds=1)
        else:
            start = self._grid = self.session_open
        if start < at:
            for _ in self._generate(start, at - dt.timedelta(seconds=1)):
                pass
        self._applied_until = at - dt.timedelta(seconds=1)
        self.start = at
        return at

    def _restore(self, state: dict) -> None:
        def rng(g: np.random.Generator, saved: dict) -> None:
            inner = saved["state"]
            g.bit_generator.state = {**saved, "state": {"state": int(inner["state"]), "inc": int(inner["inc"])}}

        self._at = dt.datetime.fromisoformat(state["at"])
        self._grid = dt.datetime.fromisoformat(state.get("grid", self.session_open.isoformat()))
        self.vix = float(state["vix"])
        self._vix_extra = float(state["vix_extra"])
        self._vix_decay_s = float(state["vix_decay_s"])
        self._gap_until = dt.datetime.fromisoformat(state["gap_until"]) if state["gap_until"] else None
        self._seq = int(state["seq"])
        rng(self._rng, state["rng"])
        if "quote_rng" in state:  # the quotes' sizes (a state stored before it had them: drawn afresh)
            rng(self._quote_rng, state["quote_rng"])
        for symbol, saved in state["markets"].items():
            m = self.markets[symbol]
            m.spot = float(saved["spot"])
            m.prev_close_spot = float(saved["prev_close_spot"])
            m.last_return = float(saved["last_return"])
            m.realised_var = float(saved["realised_var"])
            m.oi = np.array(saved["oi"], dtype=np.int64)
            m.prev_oi = np.array(saved["prev_oi"], dtype=np.int64)
            m.volume = np.array(saved["volume"], dtype=np.int64)
            m.flows = [_Flow(**f) for f in saved["flows"]]
            m.pending_bad = [
                Event(dt.time.fromisoformat(e["at"]), e["type"], dict(e["params"])) for e in saved["pending"]
            ]
            rng(m.rng, saved["rng"])
        self._applied_until = self._at

    def previous_session_vix(self) -> list[tuple[dt.datetime, float]]:
        """The calm session before this one (its own seed), India VIX once a second.

        Only what VIX needs is stepped (the indices, for realised volatility), so
        this costs a fraction of a second, once per process for a (seed, day): the
        tasks of a parameter grid share their day's."""
        return list(_previous_session_vix(self.seed, self.trading_day, tuple(self.markets)))

    def vix_path(self) -> list[tuple[dt.datetime, float]]:
        """India VIX once a second over the session, stepping only what VIX needs (the
        scenario's VIX spikes included). Consumes the feed: use a fresh one."""
        events = [e for e in self.scenario.events if e.type == "vix_spike"]
        seconds, values = [], []
        second = self.start
        # ``_step`` for every second, unrolled with local state: the same operations in the
        # same order on the same random streams, so the same values, at a fraction of the
        # cost (every backtest day steps a whole previous session to seed its VIX breaker).
        markets = list(self.markets.values())
        rngs = [m.rng for m in markets]
        multipliers = [IV_MULTIPLIER[m.symbol] for m in markets]
        spots = [m.spot for m in markets]
        variances = [m.realised_var for m in markets]
        returns = [m.last_return for m in markets]
        mean = _mean_of(len(markets))
        dt_years = 1.0 / TRADING_SECONDS_PER_YEAR
        root_dt = math.sqrt(dt_years)
        jump_p = JUMPS_PER_DAY / 22500.0
        vix, normal, exp, sqrt = self.vix, self._rng.normal, math.exp, math.sqrt
        opened = self.session_open
        one = dt.timedelta(seconds=1)
        decay = exp(-1.0 / self._vix_decay_s)
        while second <= self.end:
            while events and dt.datetime.combine(self.trading_day, events[0].at, tzinfo=IST) <= second:
                self._apply(events.pop(0), second)
                decay = exp(-1.0 / self._vix_decay_s)
            shape = _intraday_shape(max((second - opened).total_seconds() / 60.0, 0.0))
            vols = []
            for i, rng in enumerate(rngs):
                sigma = (vix / 100.0) * multipliers[i] * shape * 0.8
                ret = sigma * root_dt * rng.standard_normal() - 0.5 * sigma * sigma * dt_years
                if rng.random() < jump_p:
                    ret += rng.normal(0.0, 0.0025)
                spots[i] *= exp(ret)
                returns[i] = ret
                cap = 16.0 * sigma * sigma * dt_years
                variances[i] = 0.995 * variances[i] + 0.005 * min(ret * ret, cap) / (shape * shape)
                vols.append(sqrt(variances[i] * TRADING_SECONDS_PER_YEAR) / (multipliers[i] * 0.8))
            target = min(max(100 * mean(vols), 9.0), 60.0)
            self._vix_extra *= decay
            vix += (target - vix) / 900.0 + float(normal(0, 0.004))
            vix = max(vix, 8.0)
            seconds.append(second)
            values.append(vix + self._vix_extra)
            second += one
        for i, m in enumerate(markets):
            m.spot, m.realised_var, m.last_return = spots[i], variances[i], returns[i]
        self.vix = vix
        # np.round, as ``round`` of the numpy float that ``_step`` leaves VIX as.
        return list(zip(seconds, np.round(np.array(values), 2).tolist(), strict=True))

    # --- market dynamics --------------------------------------------------------

    def _apply(self, event: Event, now: dt.datetime) -> None:
        if event.type == "vix_spike":
            self._vix_extra += float(event.get("points", 4.0))
            self._vix_decay_s = float(event.get("decay_minutes", 15)) * 60
            self.injected.append(InjectedEvent(now, "vix_spike", params=dict(event.params)))
        elif event.type == "feed_gap":
            self._gap_until = now + dt.timedelta(seconds=float(event.get("seconds", 10)))
            self.injected.append(InjectedEvent(now, "feed_gap", params=dict(event.params)))
        elif event.type in ("informed_flow", "bad_ticks"):
            market = self.markets.get(event.get("underlying", "NIFTY"))
            if market is not None:
                market.pending_bad.append(event)

    def _step(self, now: dt.datetime) -> None:
        minutes = (now - self.session_open).total_seconds() / 60.0
        shape = _intraday_shape(max(minutes, 0.0))
        for market in self.markets.values():
            sigma = (self.vix / 100.0) * IV_MULTIPLIER[market.symbol] * shape * 0.8
            market.step_spot(sigma, shape)
        # The index volatility is VIX × the index's multiplier × 0.8: VIX drifts toward
        # the level that realised volatility implies.
        # A plain sum: np.mean of a two-element list cost more than the step itself. Below
        # eight values numpy adds them one after another too, so the double is the same;
        # it stays a numpy float, so VIX keeps being rounded by numpy as before.
        vols = [m.realised_vol / (IV_MULTIPLIER[m.symbol] * 0.8) for m in self.markets.values()]
        implied = np.float64(sum(vols) / len(vols)) if len(vols) < 8 else np.mean(vols)
        target = min(max(100 * implied, 9.0), 60.0)
        self._vix_extra *= math.exp(-1.0 / self._vix_decay_s)
        self.vix += (target - self.vix) / 900.0 + float(self._rng.normal(0, 0.004))
        self.vix = max(self.vix, 8.0)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _items(self, now: dt.datetime, *, with_chain: bool) -> list[FeedItem]:
        items: list[FeedItem] = []
        for market in self.markets.values():
            spec = market.spec
            items.append(
                LtpTick(
                    spec.index_security_id,
                    "IDX_I",
                    spec.symbol,
                    "INDEX",
                    round(market.spot, 2),
                    now,
                    now,
                    self._next_seq(),
                )
            )
            fut = market.future_price(now)
            items.append(
                LtpTick(
                    market.future.security_id,
                    "NSE_FNO",
                    f"{spec.symbol}-FUT",
                    "FUT",
                    _round_tick_one(fut, synthetic.tick_paise(market.future) / 100),
                    now,
                    now,
                    self._next_seq(),
                )
            )
        vix = self.vix + self._vix_extra
        items.append(
            LtpTick(
                synthetic.INDIA_VIX_SECURITY_ID, "IDX_I", "INDIAVIX", "VIX", round(vix, 2), now, now, self._next_seq()
            )
        )
        if with_chain:
            items.extend(self._chain(market, now) for market in self.markets.values())
        return items

    def _chain(self, market: _Market, now: dt.datetime) -> ChainSnapshot:
        spec = market.spec
        rng = market.rng
        # Flows are timed from the stream's first second, which a resumed stream keeps.
        seconds = (now - self._grid).total_seconds()
        minutes = (now - self.session_open).total_seconds() / 60.0
        profile = _intraday_shape(max(minutes, 0.0))

        # Market-wide volume and OI evolve for every contract, shown or not.
        lots = rng.poisson(market.volume_rate * profile)
        market.volume += lots * spec.lot_size
        noise = np.round(rng.normal(0.0, np.sqrt(market.volume_rate) * 0.8))
        market.oi = np.maximum(market.oi + (noise * spec.lot_size).astype(np.int64), 0)

        atm = int(np.argmin(np.abs(market.strikes - market.spot)))
        lo = max(atm - self.strikes_each_side, 0)
        hi = min(atm + self.strikes_each_side + 1, len(market.strikes))
        rows = np.arange(2 * lo, 2 * hi)

        # Scenario events that act on this snapshot.
        exchange_time = now
        bad_events = []
        for event in market.pending_bad:
            if event.type == "informed_flow":
                self._start_flow(market, event, atm, now, seconds)
            else:
                bad_events.append(event)
        market.pending_bad.clear()

        for flow in market.flows:
            if seconds >= flow.oi_start_s and seconds < flow.oi_end_s:
                market.oi[flow.row] += int(flow.oi_per_interval)

        k, iv, g, bid, ask = self._prices(market, now, rows)
        side = rng.random(len(rows))
        last = np.where(side < 0.5, bid, ask)
        bid_qty = spec.lot_size * rng.integers(4, 60, len(rows))
        ask_qty = spec.lot_size * rng.integers(4, 60, len(rows))

        snapshot = ChainSnapshot(
            underlying=spec.symbol,
            expiry=market.expiry,
            exchange_time=exchange_time,
            received_at=now,
            underlying_ltp=round(market.spot, 2),
            security_id=market.security_id[rows].copy(),
            strike=k.copy(),
            option_type=market.option_type[rows].copy(),
            last_price=last,
            oi=market.oi[rows].copy(),
            prev_oi=market.prev_oi[rows].copy(),
            volume=market.volume[rows].copy(),
            bid=bid,
            ask=ask,
            bid_qty=bid_qty.astype(np.int64),
            ask_qty=ask_qty.astype(np.int64),
            iv=np.round(iv * 100.0, 2),
            delta=g.delta,
            gamma=g.gamma,
            theta=g.theta,
            vega=g.vega,
            seq=self._next_seq(),
        )
        for event in bad_events:
            snapshot = self._corrupt(snapshot, event, now)
        return snapshot

    def _prices(self, market: _Market, now: dt.datetime, rows: np.ndarray, *, with_greeks: bool = True):
        """Strikes, smile IV, Greeks, bid and ask of some of the market's contracts at ``now``.

        ``with_greeks=False`` (the one-second quotes, which show bid and ask only): the
        same bid and ask, bit for bit, without the Greeks or any implied volatility
        solved; IV and Greeks come back as None.
        """
        seconds = (now - self._grid).total_seconds()  # the flows' time line, as in ``_chain``
        years = max((market.expiry_close - now).total_seconds(), 600.0) / (365 * 86400)
        forward = market.spot * math.exp(RATE * years)
        atm_iv = (self.vix + self._vix_extra) / 100.0 * IV_MULTIPLIER[market.symbol]
        k = market.strike[rows]
        is_call = market.option_type[rows] == CE
        m = np.clip(np.log(k / forward) / (atm_iv * math.sqrt(years)), -4.0, 4.0)
        iv = atm_iv * (1.0 + 0.05 * m * m - 0.06 * m)
        if with_greeks:
            g = greeks.all_greeks(market.spot, k, years, RATE, iv, is_call)
            model = g.price
        else:
            model = greeks.parity_price(market.spot, k, years, RATE, iv, is_call)
        theo = np.maximum(model, TICK)

        multiplier = np.ones(len(rows))
        position_of = {int(r): i for i, r in enumerate(rows.tolist())}
        for flow in market.flows:
            position = position_of.get(flow.row)
            if position is not None and seconds >= flow.start_s:
                progress = min((seconds - flow.start_s) / flow.follow_s, 1.0)
                multiplier[position] *= 1.0 + flow.jump + flow.follow * progress

        mid = np.maximum(_round_tick(theo * multiplier), TICK)
        fast = 1.0 + min(abs(market.last_return) / 0.0002, 3.0)
        # Near the money NIFTY and BANKNIFTY options trade one or two ticks wide;
        # spreads widen with moneyness, premium and a fast market.
        spread_ticks = np.maximum(np.rint((1.0 + 0.25 * np.abs(m) + mid * 0.0004) * fast), 1).astype(np.int64)
        # Centred on the unrounded price, not on its tick: the quote's mid (a half tick
        # when the spread is an odd number of ticks) is within half a tick of the model.
        bid = np.maximum(_round_tick(theo * multiplier - spread_ticks * TICK / 2.0), TICK)
        ask = _round_tick(bid + spread_ticks * TICK)
        if not with_greeks:
            return k, None, None, bid, ask
        # An informed flow moves a contract's price off the smile, and a far option worth
        # less than a tick is still quoted a tick bid: their IV and Greeks are those of
        # the price quoted (the mid of bid and ask), so the chain's IV prices what it
        # shows. Only those few contracts are solved.
        moved = np.flatnonzero(np.abs((bid + ask) / 2.0 - g.price) > TICK / 2.0 + 1e-9)
        if len(moved):
            solved = greeks.implied_vol(
                (bid[moved] + ask[moved]) / 2.0, market.spot, k[moved], years, RATE, is_call[moved]
            )
            moved, sigma = moved[np.isfinite(solved.iv)], solved.iv[np.isfinite(solved.iv)]
            iv[moved] = sigma
            fresh = greeks.all_greeks(market.spot, k[moved], years, RATE, sigma, is_call[moved])
            for name in ("price", "delta", "gamma", "theta", "vega"):
                getattr(g, name)[moved] = getattr(fresh, name)
        return k, iv, g, bid, ask

    def _quotes(self, at: dt.datetime) -> list[QuoteSnapshot]:
        """Each underlying's candidate contracts (ATM ± 3 strikes, CE and PE) at ``at``."""
        out: list[QuoteSnapshot] = []
        if at > self.end:
            return out
        for market in self.markets.values():
            atm = int(np.argmin(np.abs(market.strikes - market.spot)))
            lo = max(atm - QUOTE_STRIKES_EACH_SIDE, 0)
            hi = min(atm + QUOTE_STRIKES_EACH_SIDE + 1, len(market.strikes))
            rows = np.arange(2 * lo, 2 * hi)
            _, _, _, bid, ask = self._prices(market, at, rows, with_greeks=False)
            lot = market.spec.lot_size
            out.append(
                QuoteSnapshot(
                    underlying=market.symbol,
                    exchange_time=at,
                    received_at=at,
                    security_id=market.security_id[rows].copy(),
                    bid=bid,
                    ask=ask,
                    bid_qty=(lot * self._quote_rng.integers(4, 60, len(rows))).astype(np.int64),
                    ask_qty=(lot * self._quote_rng.integers(4, 60, len(rows))).astype(np.int64),
                    seq=self._next_seq(),
                )
            )
        return out

    def _start_flow(self, market: _Market, event: Event, atm: int, now: dt.datetime, seconds: float) -> None:
        offset = int(event.get("strike_offset", 0))
        strike_index = int(np.clip(atm + offset, 0, len(market.strikes) - 1))
        option_type = event.get("option_type", "CE")
        row = 2 * strike_index + (0 if option_type == "CE" else 1)
        lot = market.spec.lot_size
        burst = int(round(market.volume_rate[row] * float(event.get("volume_multiple", 40.0))))
        market.volume[row] += burst * lot
        noise_sd = math.sqrt(market.volume_rate[row]) * 0.8
        oi_minutes = float(event.get("oi_minutes", 2.0))
        intervals = max(oi_minutes * 60 / CHAIN_EVERY_S, 1)
        oi_total = float(event.get("oi_build", 12.0 * noise_sd * intervals))
        market.flows.append(
            _Flow(
                row=row,
                start_s=seconds,
                jump=float(event.get("jump_pct", 8.0)) / 100.0,
                follow=float(event.get("follow_through_pct", 0.0)) / 100.0,
                follow_s=max(float(event.get("follow_minutes", 5.0)) * 60.0, 1.0),
                oi_per_interval=lot * oi_total / intervals,
                oi_start_s=seconds + float(event.get("oi_delay_s", 30.0)),
                oi_end_s=seconds + float(event.get("oi_delay_s", 30.0)) + oi_minutes * 60.0,
            )
        )
        self.injected.append(
            InjectedEvent(
                now,
                "informed_flow",
                market.symbol,
                str(market.security_id[row]),
                float(market.strikes[strike_index]),
                option_type,
                dict(event.params),
            )
        )

    def _corrupt(self, snapshot: ChainSnapshot, event: Event, now: dt.datetime) -> ChainSnapshot:
        kind = event.get("kind")
        count = max(int(event.get("count", 1)), 1)
        rows = self._rng.choice(len(snapshot), size=min(count, len(snapshot)), replace=False)
        self.injected.append(
            InjectedEvent(
                now,
                f"bad_ticks:{kind}",
                snapshot.underlying,
                ",".join(str(snapshot.security_id[r]) for r in rows),
                params=dict(event.params),
            )
        )
        if kind == "crossed":
            snapshot.bid[rows] = snapshot.ask[rows] + 2 * TICK
        elif kind == "negative":
            snapshot.last_price[rows] = -snapshot.last_price[rows]
            snapshot.bid[rows] = -snapshot.bid[rows]
        elif kind == "nan":
            snapshot.bid[rows] = np.nan
            snapshot.ask[rows] = np.nan
        elif kind == "zero":
            snapshot.bid[rows] = 0.0
            snapshot.ask[rows] = 0.0
            snapshot.last_price[rows] = 0.0
        elif kind == "stale":
            snapshot.exchange_time = now - dt.timedelta(seconds=20)
        elif kind == "missing":
            strikes = np.unique(snapshot.strike[rows])
            keep = ~np.isin(snapshot.strike, strikes)
            for name in ROW_ARRAYS:
                setattr(snapshot, name, getattr(snapshot, name)[keep])
            snapshot.flags = np.zeros(int(keep.sum()), dtype=np.uint16)
        return snapshot
