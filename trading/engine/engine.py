"""The trading engine: one asyncio loop from feed to fills.

feed → validation → book and baselines (inside the strategies) → strategies →
risk gate → OMS → audit → publish on commit. ORM work goes through
``sync_to_async`` in short transactions; a failing strategy is contained and
reported; a dead channel layer only loses dashboard events. Before trading it
recovers the OMS and reconciles with the broker (HALTED on any break).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
from asgiref.sync import sync_to_async
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from audit import actors
from audit.chain import append as audit_append
from marketdata.anomaly.training import live_scorers, live_versions
from marketdata.book import QuoteBook
from marketdata.feeds.base import ChainSnapshot, LtpTick, QuoteSnapshot
from marketdata.models import Instrument
from marketdata.ticks import price_on_tick
from marketdata.validation import ChainValidator, FeedHealth
from quanthub import metrics
from quanthub.clock import IST, Clock
from quanthub.sql import Prepared, Statement
from quanthub.sql import on_db_thread as _db
from risk.breakers import VixMonitor, previous_session_vix, session_open_after
from risk.breakers import clear as clear_breaker
from risk.breakers import trip as trip_breaker
from risk.checks import RiskDecision
from risk.context import BasisReads, GateBasis, daily_net_pnl, daily_pnl_parts_and_any_live, open_positions_pnl
from risk.gate import RiskGate, record_refusal
from risk.models import RiskLimits
from risk.services import roll_over_session
from trading import writes
from trading.alerts import raise_alert
from trading.brokers.base import AuthExpired
from trading.brokers.safety import apply_pnl_exit, basket_margin_per_lot
from trading.engine import config
from trading.engine.outages import (
    BROKER,
    DATABASE,
    Outages,
    close_connections,
    describe,
    is_database_error,
    is_outside_error,
)
from trading.events import asend_now, chain_fact, publish_on_commit
from trading.events import flush as events_flush
from trading.models import EngineHeartbeat, FlattenRequest, Order, Position, Signal, Strategy
from trading.orders import flatten
from trading.orders.accounting import mark_to_market, positions_written
from trading.orders.claims import ExitClaimed
from trading.orders.daily_loss import DailyLossGuard
from trading.orders.manager import LIVE_STATES, OrderRefused
from trading.orders.reconcile import LastClean, inputs_version, reconcile
from trading.orders.requests import take_pending
from trading.orders.requests import work as work_request
from trading.orders.root import OrderPath, build_order_path
from trading.strategies.base import BookOrder
from trading.strategies.registry import get_strategy_class
from trading.strategies.vol_oi.strategy import VolOiStrategy

log = logging.getLogger(__name__)
PHASES = {p: p for p in Signal.Phase.values}
# How long a stopping engine waits for its queued dashboard facts to be sent.
LAST_FACTS_S = 2.0
# What marking reads of an open position: what it writes against, and what today's P&L sums.
MARK_COLUMNS = ("net_quantity", "average_price", "opened_at", "instrument", "realised_pnl", "unrealised_pnl", "charges")
MARK_WRITES = (writes.MARKS,)
POSITION_WRITES = ("trading.Position",)  # a position's writes but its marks
# Marks are written at once when the last write is this old (wall clock), else before the
# connection's next statement or at a later mark (``Engine._write_marks``).
MARKS_WRITE_S = 0.5
POSITIONS_KEPT_S = 1.0  # marking reads the open positions again at least this often (wall clock)
# How long a thread holding the GIL keeps it while another waits (``sys.setswitchinterval``),
# while an engine runs. The loop hands its database work to one thread and waits; with
# CPython's default of 5 ms, that thread could wait up to 5 ms for the GIL while the loop's
# thread went on with other work: a snapshot's intent then waited too (tick -> intent
# p99 2.9-4.0 ms in the full replay, against 1.2-1.7 ms with this).
GIL_SWITCH_S = 0.0005
_switch = {"engines": 0, "before": None}


def _fast_switch(on: bool) -> None:
    """``GIL_SWITCH_S`` while any engine of the process runs; the interval before it after the last."""
    if on:
        _switch["engines"] += 1
        if _switch["engines"] == 1:
            _switch["before"] = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch["before"], GIL_SWITCH_S))
    elif _switch["engines"] > 0:
        _switch["engines"] -= 1
        if _switch["engines"] == 0 and _switch["before"] is not None:
            sys.setswitchinterval(_switch["before"])


@dataclass(frozen=True)
class BooksRead:
    """Today's net P&L as the database holds it, at a second's read that found no order
    live (``Engine._second_reads``), and carried across the engine's own marks since
    (``Engine._carry_pnl``): the figure the same statement would return now."""

    written: int  # writes.generation(UNMARKED_BOOKS) at the read: any other write, read again
    marks: int  # the marks' write count the figure includes: a mark it does not include, read again
    wall: float  # time.monotonic() of the database read: another process's write is read within RECHECK_S
    day: dt.date
    closed: Decimal  # today's closed trades' part
    pnl: Decimal  # closed + today's open positions' (``risk.context.open_positions_pnl``)


@dataclass
class Loaded:
    row_id: int
    key: str
    version: int
    enabled: bool
    strategy: object
    failures: int = 0
    row: Strategy | None = None  # the row orders point at (its pk and key never change)


@dataclass
class Passed:
    """An intent the gate let through, waiting to be sent."""

    intent: object
    instrument: Instrument
    decision: object
    intent_at: dt.datetime
    gate_passed_at: dt.datetime


@dataclass
class EngineStats:
    snapshots: int = 0
    ticks: int = 0
    intents: int = 0
    refused: int = 0
    orders: int = 0
    strategy_errors: int = 0
    tick_to_intent_ms: list[float] = field(default_factory=list)


class Engine:
    def __init__(
        self,
        *,
        feed,
        broker,
        clock: Clock,
        book: QuoteBook,
        account: str = "default",
        writer=None,
        limits=RiskLimits.active,
        reconcile_every_s: float = 30.0,
        orders: OrderPath | None = None,
    ):
        self.feed, self.broker, self.clock, self.book, self.account = feed, broker, clock, book, account
        self.writer = writer
        limits_now = limits()
        self._limits = limits_now  # refreshed at every snapshot: admin changes reach the limiter too
        # The account's order path from the one composition root; the limits it reads are
        # the engine's cached copy, refreshed every snapshot (admin changes reach the limiter).
        self.orders = orders or build_order_path(
            account, clock=clock, book=book, broker=broker, limits=lambda: self._limits
        )
        self.broker, self.limiter, self.oms = self.orders.broker, self.orders.limiter, self.orders.oms
        self.gate = RiskGate()
        self.validator = ChainValidator()
        self.health = FeedHealth(chain_stale_s=limits_now.feed_stale_chain_s, ltp_stale_s=limits_now.feed_stale_ltp_s)
        self.vix = VixMonitor(
            sigma=float(limits_now.vix_breaker_sigma),
            normalise_minutes=float(limits_now.vix_normalise_minutes),
            window_s=float(limits_now.vix_change_window_s),
            min_samples=int(limits_now.vix_min_samples),
        )
        self.strategies: list[Loaded] = []
        self.instruments: dict[str, Instrument] = {}
        self.underlying_ids: dict[str, str] = {}
        self.stats = EngineStats()
        self.engine_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.reconcile_every_s = reconcile_every_s
        self._stopping = False
        self.loss_guard = DailyLossGuard(self.orders, self._start_flatten)  # the daily-loss breaker, with broker truth
        self._last_second: dt.datetime | None = None
        self._last_reconcile: dt.datetime | None = None
        self._reconciled = LastClean()  # a repeat on unchanged books need not run
        self._pushed: dict[str, float] = {}
        self._open_sids: set[str] = set()
        self._resting_entries: set[int] = set()  # entries sent and not yet filled: requote candidates
        self._funds: dict[str, str] | None = None  # the broker's last funds report, for the risk panel
        self._greeks: dict[str, tuple[float, float, float, float]] = {}
        self._exits_checked = -1e9  # time.monotonic() of the last look for flatten requests
        self._requests_query: Prepared | None = None
        self._flattens: set[asyncio.Task] = set()
        self._exit_alerts = flatten.Alerts(account, clock, "oms")
        self._mark_needed = True  # mark once at the first second: a restart may find positions open
        # (open positions, fills applied then, positions' unmarked writes then, monotonic
        # time): ``_positions_to_mark``.
        self._positions_kept: tuple[list[Position], int, int, float] | None = None
        # Today's net P&L as the books hold it, read at a second that found nothing live
        # and carried across this engine's own marks: ``_the_seconds_reads``.
        self._books_read: BooksRead | None = None
        # Marks made and not yet written, per position (row, columns): ``_write_marks``.
        self._waiting_marks: dict[int, tuple[Position, dict]] = {}
        self._marks_written_wall = -1e9
        writes.watch_all()
        self._limits_key: tuple | None = None  # (pk, version, updated_at) of the limits held in _limits
        self._limits_fresh = False  # read at this snapshot: the gate may use them as they are
        self._config_second: dt.datetime | None = None  # the second whose trip last read the config
        self._config_seen: tuple[int, float] | None = None  # (config.generation(), time.monotonic()) of the last look
        # Marking's read, compiled once; its rows become model instances without a raw query's set-up.
        self._positions_query = Statement(
            lambda account: Position.objects.filter(account=account).exclude(net_quantity=0).only(*MARK_COLUMNS), str
        )
        self._mark_sql: dict[tuple[str, ...], str] = {}  # marking's updates, compiled once per set of columns
        self._position_fields = {f.name: f for f in Position._meta.concrete_fields}
        self._instruments_by_pk: dict[int, Instrument] = {}
        self._basis: GateBasis | None = None  # the gate's database reads, for the current snapshot or second
        # What the gate's basis read but the limits and the P&L, with writes.generation(GATE_BASIS)
        # before that read and its monotonic time: ``_held_basis_reads``.
        self._basis_reads: tuple[BasisReads, int, float] | None = None
        self._switching = False  # this engine holds the process's GIL switch interval (``_fast_switch``)
        self._funds_due = False  # the basis was loaded without the broker's funds (``_due_funds``)
        self._basket = None  # the broker's margin for the intents being gated (trading.brokers.safety)
        self._beat_created = False
        self._config_queries: tuple[Prepared, Prepared] | None = None
        # Whether a signal was entered before: compiled once (its join cost more to compile than to run).
        self._entered_query = Statement(
            lambda key: Order.objects.filter(signal__key=key, purpose=Order.Purpose.ENTRY).values_list("pk")[:1], str
        )
        self._last_beat_wall: float | None = None
        # While the broker pushes order updates, REST sync is the slower safety net.
        self.rest_sync_slow_s = 5.0
        self._last_rest_sync = -1e9
        self._pnl_exit: dict | None = None  # the broker-side P&L exit as last read back, for the risk panel
        self._safety_due = True  # set the broker-side P&L exit at start and whenever the limits change
        self._next_open: dt.datetime | None = None  # the next session open, for the HALT rollover
        self._anomaly_versions: dict[str, int] | None = None
        self._anomaly_checked = -1e9
        self._states_written: dict[int, tuple[str | None, float]] = {}  # per strategy row: what, when
        self.started = asyncio.Event()
        self.outages = Outages(account, now=self.clock.now)
        self._resync_needed = True  # recovery and reconciliation have not succeeded yet

    # --- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking entries; the loop finishes its unit of work and exits."""
        self._stopping = True
        for loaded in self.strategies:
            loaded.strategy.entries_enabled = False

    async def start(self) -> None:
        """Load, recover, reconcile, rebuild the strategies from the book. A database
        that is not there yet is waited for; a broker that fails leaves the engine
        REDUCING, retrying recovery with back-off from the loop."""
        actors.enter_engine(self.engine_id)  # what the engine's parts record is the engine's (audit.actors)
        if not self._switching:
            self._switching = True
            _fast_switch(True)
        await self._until_database(self._load)
        await self._seed_vix()
        await self._resync("start")
        await self.broker.start(self.oms)
        await self._safety_net()
        await self._roll_over(self.clock.now())
        try:
            await _db(self._beat)("ACTIVE")
        except Exception as exc:
            if not is_database_error(exc):
                raise
            await self._database_lost(exc)
        self.started.set()

    def _load(self) -> None:
        self.strategies = []
        self._load_instruments()
        self._load_strategies()
        self._anomaly_versions = None  # the strategies are new: give them the live models again
        self._load_anomaly_models()
        self._warm_gate()

    def _warm_gate(self) -> None:
        """The gate's reads compiled before the session's first intent, not at it (a
        first entry waited several milliseconds for its statements to compile)."""
        GateBasis.load(account=self.account, now=self.clock.now(), limits=self._limits)
        self._entered_query.rows("")

    async def _until_database(self, fn) -> None:
        while True:
            try:
                await _db(fn)()
            except Exception as exc:
                if not is_database_error(exc):
                    raise
                await self._database_lost(exc)
                if self._stopping:
                    raise
                await asyncio.sleep(max(self.outages.delay(DATABASE), 0.1))
                continue
            await self.outages.succeeded(DATABASE)
            return

    async def _resync(self, why: str) -> bool:
        """Recovery, reconciliation, and each strategy's state rebuilt from the book
        (on start, after a takeover, after an outage). False (and REDUCING) when the
        broker fails; the loop tries again after the back-off."""
        try:
            counts = await self.oms.recover()
            self._reconciled = LastClean()
            result = await reconcile(self.broker, account=self.account, clock=self.clock)
        except Exception as exc:
            if is_database_error(exc) or not is_outside_error(exc):
                raise
            self._resync_needed = True
            await self._broker_failed(exc, where=f"recovery ({why})")
            return False
        self._resync_needed = False
        await self.outages.succeeded(BROKER)
        await self._rebuild_strategies(why)
        log.info(
            "engine synchronised with the broker",
            extra={"engine": self.engine_id, "why": why, "recovered": counts, "breaks": len(result.breaks)},
        )
        return True

    async def _broker_failed(self, exc: BaseException, *, where: str) -> None:
        if isinstance(exc, AuthExpired):
            await self.oms.on_auth_expired(exc, where=where)
        await self.outages.failed(BROKER, exc)

    async def _outside(self, make, *, where: str, default=None, asks: bool = True):
        """One broker call of the loop: skipped during its back-off; a failure opens
        (or extends) the broker outage instead of ending the engine.

        ``asks=False``: this time ``make`` answers from what the engine holds (an order
        sync with nothing to look up), so it runs even during the back-off and proves
        nothing about the broker: only an answer from the broker ends its outage."""
        if not asks:
            return await make()
        if not self.outages.due(BROKER):
            return default
        try:
            value = await make()
        except Exception as exc:
            if is_database_error(exc) or not is_outside_error(exc):
                raise
            await self._broker_failed(exc, where=where)
            return default
        if BROKER in self.outages.open and not self._resync_needed:
            await self.outages.succeeded(BROKER)
        return value

    async def _database_lost(self, exc: BaseException) -> None:
        # What marking and the second's reads kept may not be what the database holds.
        self._positions_kept = self._books_read = self._basis_reads = None
        self._waiting_marks = {}  # marked on rows that may not be the books': marked again from a fresh read
        await self.outages.failed(DATABASE, exc)
        try:
            await _db(close_connections)()
        except Exception:  # noqa: S110  (dropping a dead connection can only fail harmlessly)
            pass

    async def _database_back(self) -> bool:
        try:
            await _db(self._ping)()
        except Exception as exc:
            if not is_database_error(exc):
                raise
            await self._database_lost(exc)
            return False
        await self.outages.succeeded(DATABASE)
        # Whatever was in flight when it went is looked up; state is read again.
        self._beat_created = False
        self._config_queries = None
        self._config_seen = None
        self.oms._any_live = None
        await self._resync("database back")
        return True

    @staticmethod
    def _ping() -> None:
        close_connections()
        Strategy.objects.exists()

    async def _rebuild_strategies(self, why: str) -> None:
        """Each strategy's per-signal state from its order and fill rows (the truth)."""
        books = await _db(self._book_orders)()
        now = self.clock.now()
        for loaded in self.strategies:
            intents = self._contained(loaded, loaded.strategy.rebuild_from_book, books.get(loaded.key, []))
            await self._submit_all(loaded, intents, now, now)
        await _db(self._persist_states)()
        log.info("strategy state rebuilt from the book", extra={"why": why, "engine": self.engine_id})

    def _book_orders(self) -> dict[str, list[BookOrder]]:
        since = self.clock.now() - dt.timedelta(days=1)  # orders carry the engine's clock
        rows = (
            Order.objects.filter(account=self.account, created_at__gte=since, strategy__isnull=False)
            .select_related("strategy", "signal", "instrument__underlying")
            .order_by("created_at", "pk")
        )
        books: dict[str, list[BookOrder]] = {}
        for o in rows:
            books.setdefault(o.strategy.key, []).append(
                BookOrder(
                    signal_key=o.signal.key if o.signal_id else None,
                    security_id=o.instrument.security_id,
                    underlying=o.instrument.underlying.symbol,
                    kind=o.instrument.kind,
                    side=o.side,
                    purpose=o.purpose,
                    state=o.state,
                    quantity=o.quantity,
                    filled_quantity=o.filled_quantity,
                    average_price=o.average_price,
                    created_at=o.intent_at or o.created_at,
                    first_fill_at=o.first_fill_at,
                    reason=o.reason,
                )
            )
        return books

    async def _seed_vix(self) -> None:
        """The VIX breaker's σ from the previous session's stored VIX (or, with nothing
        stored, the one the feed can produce), so it judges from the first tick."""
        try:
            ticks = await _db(previous_session_vix)(self.clock.now())
        except Exception as exc:
            if not is_database_error(exc):
                raise
            ticks = []  # the database comes back later; the feed's own history still seeds it
        if not ticks:
            ticks = await sync_to_async(self.feed.previous_session_vix, thread_sensitive=False)()
        learnt = self.vix.seed(ticks)
        log.info("vix breaker seeded", extra={"changes": learnt, "std": round(self.vix.std, 4)})

    async def run(self) -> EngineStats:
        await self.start()
        try:
            async for item in self.feed:
                await self.step(item)
                if self._stopping:
                    break
        finally:
            await self.shutdown()
        return self.stats

    async def step(self, item) -> None:
        """One feed item, never ended by the outside world: while the database is
        gone only the book moves (retrying after the back-off); a broker or
        database failure opens an outage instead of raising."""
        actors.enter_engine(self.engine_id)
        if DATABASE in self.outages.open and (not self.outages.due(DATABASE) or not await self._database_back()):
            self._book_only(item)
            return
        try:
            await self.tick(item)
        except Exception as exc:
            if is_database_error(exc):
                await self._database_lost(exc)
            elif is_outside_error(exc):
                await self._broker_failed(exc, where="the engine loop")
            else:
                raise

    def _book_only(self, item) -> None:
        if isinstance(item, LtpTick):
            self.book.update_ltp(item)
        elif isinstance(item, ChainSnapshot):
            self.book.update_chain(item)

    async def shutdown(self) -> None:
        actors.enter_engine(self.engine_id)
        if self._flattens:  # a flatten in progress finishes (each has its own deadline)
            await asyncio.gather(*list(self._flattens), return_exceptions=True)
        await self.feed.close()
        await self.oms.wait_for_retries()
        steps = [
            self._mark_positions,
            self._write_marks,
            lambda: self._persist_states(always=True),
            lambda: self._beat("STOPPED"),
        ]
        try:
            await self.broker.close()
        except Exception:  # closing streams and threads must not keep the engine from stopping
            log.exception("broker close failed", extra={"engine": self.engine_id})
        if self.writer is not None:
            steps.insert(0, lambda: self.writer.flush(close_bars=True))
        for fn in steps:
            try:
                await _db(fn)()
            except Exception as exc:
                if not is_database_error(exc):
                    raise
                log.warning("shutdown step skipped: database error", extra={"error": describe(exc)})
        await self._last_facts()
        if self._switching:
            self._switching = False
            _fast_switch(False)
        log.info(
            "engine stopped",
            extra={
                "engine": self.engine_id,
                "stats": {k: v for k, v in vars(self.stats).items() if k != "tick_to_intent_ms"},
            },
        )

    async def _last_facts(self) -> None:
        """The pages hear that the engine stopped (its STOPPED beat is written), and the facts
        still queued for them are sent before the loop ends, within a bound: a channel
        layer that is down cannot hold the stop."""
        try:
            await asend_now(
                "heartbeat",
                {"engine": self.engine_id, "at": self.clock.now().isoformat(), "role": "STOPPED"},
                account=self.account,
            )
            await asyncio.wait_for(events_flush(), LAST_FACTS_S)
        except Exception as exc:  # the dashboards' loss, never the stop's
            log.warning("last dashboard facts not sent", extra={"engine": self.engine_id, "error": repr(exc)})

    # --- set-up from the database ----------------------------------------------------------

    def _load_instruments(self) -> None:
        self._use_instruments(list(Instrument.objects.filter(is_active=True).select_related("underlying")))

    def _use_instruments(self, rows: list[Instrument]) -> None:
        """The instruments this engine trades: their ticks go into the book (its one-tick
        spread around an LTP), their strike steps into the validator."""
        self.instruments = {i.security_id: i for i in rows}
        self._instruments_by_pk = {i.pk: i for i in rows}
        self.book.ticks.update({sid: float(i.tick_size) for sid, i in self.instruments.items()})
        self.underlying_ids = {i.underlying.symbol: i.underlying.security_id for i in rows}
        self.validator.strike_steps = {i.underlying.symbol: float(i.underlying.strike_step) for i in rows}

    def _load_strategies(self) -> None:
        lot_sizes = {sid: i.lot_size for sid, i in self.instruments.items() if i.kind in ("CE", "PE")}
        futures = {}
        for i in self.instruments.values():
            if i.kind == "FUT" and (i.underlying.symbol not in futures or i.expiry < futures[i.underlying.symbol][2]):
                futures[i.underlying.symbol] = (i.security_id, i.lot_size, i.expiry)
        for row in Strategy.objects.all():
            cls = get_strategy_class(row.key)
            strategy = cls()
            strategy.configure(cls.config_class.from_params(row.params))
            if isinstance(strategy, VolOiStrategy):
                strategy.set_instruments(lot_sizes, {k: (v[0], v[1]) for k, v in futures.items()})
            strategy.set_state(row.state or {})
            strategy.entries_enabled = row.enabled
            self.strategies.append(Loaded(row.pk, row.key, row.version, row.enabled, strategy, row=row))

    def _load_anomaly_models(self) -> None:
        """Give the strategies the live anomaly model of each underlying, verified
        against its recorded hash; again whenever the live versions change (nightly
        training, a pin or a rollback in the admin): one small query otherwise."""
        versions = live_versions()
        if versions == self._anomaly_versions:
            return
        self._anomaly_versions = versions
        scorers, errors = live_scorers()
        for error in errors:
            raise_alert("WARNING", "anomaly", "Anomaly model refused", error, account=self.account)
        for loaded in self.strategies:
            loaded.strategy.set_anomaly_scorers(scorers)

    def _config_due(self) -> bool:
        """Whether the configuration may have changed since the last look (``trading.engine.config``)."""
        seen = self._config_seen
        return seen is None or seen[0] != config.generation() or time.monotonic() - seen[1] >= config.RECHECK_S

    def _follow_config(self) -> None:
        """``_refresh_config`` when the configuration may have changed; otherwise the
        limits held are current, and the gate uses them as they are."""
        if not self._config_due():
            self._config_held()
            return
        generation = config.generation()  # before the reads: a save meanwhile is looked at next time
        self._refresh_config()
        self._config_seen = (generation, time.monotonic())

    def _config_held(self) -> None:
        """The limits held are current (the caller found nothing due): the gate uses them
        as they are. On the event loop, where nothing may be read: deciding again here
        could find the wall-clock window just passed and read the database there."""
        self._limits_fresh = True

    def _refresh_config(self) -> None:
        """Pick up admin changes at every snapshot: strategy params and the enabled
        switch (both bump the row's version), and the active risk limits.

        Two one-column queries find out whether anything changed; the full rows
        are read only when it did. Every admin path bumps the version (and
        ``updated_at``), so nothing is missed.
        """
        if self._config_queries is None:
            self._config_queries = (
                Prepared(
                    Strategy.objects.filter(pk__in=[s.row_id for s in self.strategies]).values_list("pk", "version")
                ),
                Prepared(RiskLimits.objects.filter(is_active=True).values_list("pk", "version", "updated_at")[:1]),
            )
        strategies, limits = self._config_queries
        versions = dict(strategies.rows())
        changed = [s for s in self.strategies if versions.get(s.row_id, s.version) != s.version]
        rows = Strategy.objects.in_bulk([s.row_id for s in changed]) if changed else {}
        for loaded in changed:
            row = rows.get(loaded.row_id)
            if row is None:
                continue
            loaded.strategy.configure(type(loaded.strategy).config_class.from_params(row.params))
            loaded.enabled = row.enabled
            loaded.strategy.entries_enabled = row.enabled and not self._stopping
            loaded.version = row.version
            loaded.row = row
        key = next(iter(limits.rows()), None)
        if key is None or key != self._limits_key:
            self._limits = RiskLimits.active()
            self._safety_due = self._safety_due or self._limits_key is not None
            self._limits_key = key
        self._limits_fresh = True

    def _persist_states(self, *, always: bool = False) -> None:
        """Each strategy's state on its row; a state this engine wrote less than a
        wall-clock second ago, unchanged since, is not written again (live this runs
        every 30 s or after a fill, so it always writes)."""
        wall = time.monotonic()
        for loaded in self.strategies:
            state = loaded.strategy.get_state()
            try:
                key = json.dumps(state, sort_keys=True, cls=DjangoJSONEncoder)
            except (TypeError, ValueError):
                key = None
            written = self._states_written.get(loaded.row_id)
            if (
                not always
                and key is not None
                and written is not None
                and written[0] == key
                and wall - written[1] < writes.RECHECK_S
            ):
                continue
            Strategy.objects.filter(pk=loaded.row_id).update(state=state)
            self._states_written[loaded.row_id] = (key, wall)

    def _beat(self, role: str) -> None:
        # beat_at is wall-clock time (the health check and the dashboards judge
        # liveness by it); market_time is the engine's clock, simulated in replays.
        wall = timezone.now()
        market = self.clock.now()
        values = {
            "role": role,
            "beat_at": wall,
            "market_time": market,
            "feed_state": (self.feed.get_state() if self.feed is not None else None) or {},
            "feed_health": metrics.engine_beat_health(self.health.as_dict(market)),
            "stats": {
                **{k: v for k, v in vars(self.stats).items() if k != "tick_to_intent_ms"},
                "funds": self._funds,
                "outages": self.outages.summary(),
                "pnl_exit": self._pnl_exit,
                # Wall-clock snapshot → intent of the latest intents, for the latency panel.
                "tick_to_intent_recent_ms": [round(v, 3) for v in self.stats.tick_to_intent_ms[-200:]],
            },
        }
        # After the first beat one UPDATE does (the row is this engine's own).
        if self._beat_created and EngineHeartbeat.objects.filter(engine_id=self.engine_id).update(**values):
            return
        fixed = {
            "account": self.account,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "broker": self.broker.name,
            "feed": getattr(self.feed, "name", "feed"),
        }
        EngineHeartbeat.objects.update_or_create(
            engine_id=self.engine_id,
            defaults={**fixed, **values},
            create_defaults={**fixed, **values, "started_at": wall},
        )
        self._beat_created = True

    # --- the loop ------------------------------------------------------------------------

    async def tick(self, item) -> None:
        actors.enter_engine(self.engine_id)
        now = self.clock.now()
        if isinstance(item, LtpTick):
            ok = self.validator.validate_ltp(item, now, stale_after_s=self.health.ltp_stale_s)
            self.health.observe_ltp(item, now, ok)
            self.stats.ticks += 1
            if ok:
                self.book.update_ltp(item)
                if item.kind == "VIX":
                    await self._vix(item)
            if self.writer is not None:
                self.writer.add_tick(item)
            second = item.exchange_time.replace(microsecond=0)
            if second != self._last_second:
                self._last_second = second
                await self._every_second(now)
            return
        if isinstance(item, ChainSnapshot):
            await self._on_chain(item, now)
        elif isinstance(item, QuoteSnapshot):
            await self._on_quotes(item, now)

    async def _on_quotes(self, quotes: QuoteSnapshot, now: dt.datetime) -> None:
        """One-second quotes of the candidate contracts: the book, the strategies'
        jump window, and the requote of entries still resting."""
        self.book.update_quotes(quotes)
        await self.broker.on_market_data()
        for loaded in self.strategies:
            intents = self._contained(loaded, loaded.strategy.on_quotes, quotes)
            if intents:
                await self._submit_all(loaded, intents, now, quotes.received_at)
        await self._requote_entries(now)

    async def _requote_entries(self, now: dt.datetime) -> None:
        """An entry not fully filled follows the touch inside its partial-fill window.

        Up to ``max_requotes`` times, re-priced to the current ask (bid for a
        sell) but never more than ``max_requote_chase`` from its first price,
        and only while less than ``partial_fill_wait_ms`` has passed since the
        acknowledgement; at that moment the order manager's partial-fill rule
        takes over. Each requote is on the order row (price, count) and in the
        audit chain.
        """
        if not self._resting_entries:
            return
        limits = self._limits
        wait = dt.timedelta(milliseconds=limits.partial_fill_wait_ms)
        for pk in list(self._resting_entries):
            order = await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=pk)
            done = order.state not in (Order.State.OPEN, Order.State.PARTIAL) or order.acked_at is None
            if done or now - order.acked_at >= wait or order.requote_count >= limits.max_requotes:
                self._resting_entries.discard(pk)
                continue
            quote = self.book.get(order.instrument.security_id)
            if quote is None or order.limit_price is None or order.first_price is None:
                continue
            buy = order.side == Order.Side.BUY
            touch = price_on_tick(order.instrument, quote.ask if buy else quote.bid)
            cap = order.first_price + limits.max_requote_chase if buy else order.first_price - limits.max_requote_chase
            price = min(touch, cap) if buy else max(touch, cap)
            if (price <= order.limit_price) if buy else (price >= order.limit_price):
                continue  # the touch has not moved away, or the chase budget is spent
            try:
                requoted = await self.oms.requote(order, price)
            except OrderRefused as exc:
                log.info("requote refused", extra={"order": order.client_order_id, "reason": str(exc)})
                self._resting_entries.discard(pk)
                continue
            except Exception as exc:  # a reject or timeout: the partial-fill rule still applies at 1 s
                log.warning("requote failed", extra={"order": order.client_order_id, "error": repr(exc)})
                continue
            await _db(self._audit_requote)(requoted, order.limit_price, now)

    def _audit_requote(self, order: Order, old_price, now: dt.datetime) -> None:
        with transaction.atomic():
            self._append_requote(order, old_price, now)

    def _append_requote(self, order: Order, old_price, now: dt.datetime) -> None:
        audit_append(
            "order.requoted",
            actor=actors.engine(self.engine_id),
            subject=f"order:{order.client_order_id}",
            payload={
                "from": old_price,
                "to": order.limit_price,
                "first_price": order.first_price,
                "requotes": order.requote_count,
                "filled": order.filled_quantity,
            },
            at=now,
        )

    async def _vix(self, tick: LtpTick) -> None:
        verdict = self.vix.observe(tick.exchange_time, tick.ltp)
        if verdict == "trip":
            await _db(trip_breaker)(
                "vix",
                f"India VIX jumped to {tick.ltp:.2f} (> {self.vix.sigma:g}σ of {self.vix.window_s:g}-second changes)",
                at=tick.exchange_time,
                account=self.account,
            )
        elif verdict == "clear":
            await _db(clear_breaker)("vix", at=tick.exchange_time, actor="breaker:vix", account=self.account)

    async def _roll_over(self, now: dt.datetime) -> None:
        """At start and at each session's open: an expired daily-loss HALT returns to ACTIVE
        (``risk.services.roll_over_session``; an open reconciliation break keeps it)."""
        kept = await _db(roll_over_session)(account=self.account, now=now)
        if kept:
            log.info("HALT kept at session open", extra={"account": self.account, "why": kept})
        self.loss_guard.new_session()  # a new session: its own daily loss check
        self._next_open = session_open_after(now)

    async def _every_second(self, now: dt.datetime) -> None:
        if self._next_open is not None and now >= self._next_open:
            await self._roll_over(now)
        # Exits requested from outside (the API, the dashboard) go out from here, so their fills
        # reach the strategies. Looked for once a wall-clock second, not once a simulated one.
        if time.monotonic() - self._exits_checked >= 1.0:
            self._exits_checked = time.monotonic()
            await self._take_requests()
        self._basis, self._limits_fresh = None, False  # a new batch: the gate reads the database again
        self._config_second = None
        # What every second needs, in at most one trip to the database thread: the live
        # orders and, while nothing is live (most seconds), today's net P&L.
        live, pnl = await self._the_seconds_reads(now)
        orders_before = self.stats.orders
        await self.outages.settle()
        if self._resync_needed and self.outages.due(BROKER):
            await self._resync("retry after a broker failure")
        if self._safety_due:
            await self._safety_net()
        # Pushed order updates are applied as they arrive; REST sync then runs every few
        # seconds as the safety net, and every second again as soon as the push is not healthy.
        rest_due = not self.broker.push_healthy or time.monotonic() - self._last_rest_sync >= self.rest_sync_slow_s
        if rest_due and live:
            self._last_rest_sync = time.monotonic()
        events = await self._outside(
            lambda: self.oms.sync(live=live if rest_due else []), where="sync", default=[], asks=bool(rest_due and live)
        )
        touched = False
        for event in events:
            for loaded in self.strategies:
                if event.strategy_key == loaded.key:
                    handler = loaded.strategy.on_fill if hasattr(event, "price") else loaded.strategy.on_order_update
                    await self._submit_all(loaded, self._contained(loaded, handler, event), now, now)
                    touched = True
        if touched:  # fills change what a trade holds: save it now
            await _db(self._persist_states)()
        for loaded in self.strategies:
            await self._submit_all(loaded, self._contained(loaded, loaded.strategy.on_timer, now), now, now)
        if any(o.purpose == Order.Purpose.EXIT for o in live):
            await self._work_exits([o.pk for o in live if o.purpose == Order.Purpose.EXIT])
        # P&L read before sync is still today's figure if nothing was live and nothing was sent since.
        await self._daily_loss(now, pnl if not events and self.stats.orders == orders_before else None)
        # Open positions are marked on the engine's clock (every second while any is open or
        # a fill came), so a replay marks exactly as live trading does: P&L, the daily loss
        # check and a closed trade's risk amount never depend on how fast the replay ran.
        if self._mark_needed or self._open_sids or events:
            self._mark_needed = False
            await _db(self._mark_and_read if events else lambda _now: self._mark_positions())(now)
        # The heartbeat row and the dashboards' push: at most once per wall-clock second.
        # Live, that is every second; a replay at full speed would otherwise write a
        # heartbeat for every simulated second.
        wall = time.monotonic()
        if self._last_beat_wall is None or wall - self._last_beat_wall >= 1.0:
            self._last_beat_wall = wall
            await _db(self._beat)("ACTIVE")
            await self._push(now)
        if self._last_reconcile is None or (now - self._last_reconcile).total_seconds() >= self.reconcile_every_s:
            self._last_reconcile = now
            version = inputs_version(self.broker)  # before it reads: a write meanwhile is read next time
            if not self._reconciled.holds(version, now):
                result = await self._outside(
                    lambda: reconcile(self.broker, account=self.account, clock=self.clock), where="reconciliation"
                )
                self._reconciled.ran(version, result)
                if result is not None and result.repaired:
                    await self._rebuild_strategies("repair")
            # A new live model (nightly training, the admin) is looked for at most once a
            # wall-clock second: live, at every reconciliation as before.
            if time.monotonic() - self._anomaly_checked >= writes.RECHECK_S:
                self._anomaly_checked = time.monotonic()
                await _db(self._load_anomaly_models)()
            if self.writer is not None and self.writer.pending:
                await _db(self.writer.flush)()
            await _db(self._persist_states)()

    async def _work_exits(self, order_ids: list[int]) -> None:
        """A resting exit follows the touch (``flatten.follow_touch``): a stop or a take-profit
        sent at the mid would otherwise rest unfilled once the market moves away."""
        resting = await _db(
            lambda: list(
                Order.objects.filter(
                    pk__in=order_ids, state__in=[Order.State.OPEN, Order.State.PARTIAL]
                ).select_related("instrument", "strategy", "signal")
            )
        )()
        await flatten.follow_touch(self.oms, resting, self._exit_alerts)

    async def _take_requests(self) -> None:
        """Kill All and Exit requests from outside (the dashboard, the API, the CLI, the admin)
        are worked here, on this engine's order path and clock, beside the loop: the feed
        keeps the book live while they work, and the strategies hear their fills."""
        if self._requests_query is None:
            self._requests_query = Prepared(
                FlattenRequest.objects.filter(account=self.account, state=FlattenRequest.State.PENDING).values_list(
                    "pk"
                )[:1]
            )
        if not await _db(self._requests_query.exists)():
            return
        for row in await _db(take_pending)(self.account, self.engine_id, self.clock):
            log.warning("flatten request taken", extra={"request": row.pk, "kind": row.kind, "engine": self.engine_id})
            self._spawn(work_request(self.orders, row))

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._flattens.add(task)
        task.add_done_callback(self._flattens.discard)

    # Live and in the demo a flatten works beside the loop, so the feed keeps the book live
    # while it does. A backtest at full speed awaits it in place instead: otherwise how far
    # the replayed market ran on while the flatten waited for the database would set its
    # prices, and a day's decisions would differ from run to run.
    flatten_beside_the_loop = True

    async def _start_flatten(self, coro) -> None:
        if self.flatten_beside_the_loop:
            self._spawn(coro)
        else:
            await coro

    def _mark_positions(self) -> None:
        """Open positions at the mid of the live book, with Greeks from the latest
        chain and the strategy's stop, target and time-out. A conditional update:
        a fill that changed the position since it was read wins."""
        levels: dict = {}
        for loaded in self.strategies:
            try:
                levels.update(loaded.strategy.exit_levels())
            except Exception:  # a strategy's bug must not stop marking
                log.exception("exit_levels failed", extra={"strategy": loaded.key})
        rows = self._positions_to_mark()
        self._open_sids = {p.instrument.security_id for p in rows}
        marks_before = writes.generation(MARK_WRITES)
        for p in rows:
            sid = p.instrument.security_id
            values: dict = {}
            quote = self.book.get(sid)
            if quote is not None and quote.bid > 0 and quote.ask > 0:
                mark_to_market(p, price_on_tick(p.instrument, (quote.bid + quote.ask) / 2))
                values.update(last_price=p.last_price, unrealised_pnl=p.unrealised_pnl)
            greeks = (1.0, 0.0, 0.0, 0.0) if p.instrument.kind == "FUT" else self._greeks.get(sid)
            if greeks is not None:
                values.update(delta=greeks[0], gamma=greeks[1], theta=greeks[2], vega=greeks[3])
            level = levels.get(sid)
            if level is not None and p.opened_at is not None:
                values.update(
                    stop_price=price_on_tick(p.instrument, level.stop),
                    target_price=price_on_tick(p.instrument, level.target),
                    ttl_seconds=max(int((level.deadline - p.opened_at).total_seconds()), 0),
                )
            if values:
                # Looked up each time: a statement meanwhile (a row's instrument read) writes those waiting.
                earlier = self._waiting_marks.get(p.pk)
                self._waiting_marks[p.pk] = (p, {**earlier[1], **values} if earlier else values)
        if not self._carry_pnl(rows, marks_before):
            self._books_read = None  # the figure read does not include these marks: read again
        if self._waiting_marks:
            if time.monotonic() - self._marks_written_wall >= MARKS_WRITE_S:
                self._write_marks()
            else:  # in the database before anything reads it: before the next statement, whatever runs it
                writes.before_next_statement(connection, self._write_marks)

    def _write_marks(self) -> None:
        """The marks waiting since the last write, each position's latest: one conditional
        update per position (a fill that changed the position since it was read wins).

        Marking writes at once when its last write is ``MARKS_WRITE_S`` of wall time old:
        live, that is every second, as before. Sooner (a replay at full speed), the marks
        wait for the next statement on the engine's database connection, whatever runs it
        (``writes.before_next_statement``), or the next mark at least ``MARKS_WRITE_S`` on:
        every read of this process through that connection (today's P&L, the gate's
        basis, a fill's position, the trade it closes) finds them written, and the
        seconds in between cost no statement. Another process (the dashboards) sees them
        at most ``MARKS_WRITE_S`` of wall time late."""
        if not self._waiting_marks:
            return
        waiting, self._waiting_marks = self._waiting_marks, {}
        self._marks_written_wall = time.monotonic()
        before, hit = writes.generation(MARK_WRITES), True
        try:
            with writes.marking():  # the marks only: reconciliation's inputs are unchanged
                for p, values in waiting.values():
                    hit = self._update_mark(p, values) and hit
        except BaseException:
            self._positions_kept = self._books_read = None  # what they hold may not be the books'
            raise
        if not hit:
            self._positions_kept = None  # a row moved under us (another process): read again
        kept = self._books_read
        # The P&L carried across these marks stays the books' figure, unless a mark missed
        # or they went into a transaction that may yet roll back: then the next second reads.
        if hit and kept is not None and kept.marks == before and not connection.in_atomic_block:
            self._books_read = dataclasses.replace(kept, marks=writes.generation(MARK_WRITES))

    def _carry_pnl(self, rows: list[Position], marks_before: int) -> bool:
        """Today's P&L read at this second carried across the marks just made: its open
        positions' part summed from the rows as marked (``open_positions_pnl``), the
        closed trades' part as read. Only while the rows and the figure are the books as
        they stand once the marks are written: nothing but the engine's marks written
        since the read, the rows read after every other write to a position, the same
        day; and a mark that misses its row when written (``_write_marks``) makes the
        next second read the books, as it did before."""
        kept = self._books_read
        now = self.clock.now()
        if (
            kept is None
            or kept.written != writes.generation(writes.UNMARKED_BOOKS)
            or kept.marks != marks_before
            or self._positions_kept is None
            or self._positions_kept[0] is not rows
            or self._positions_kept[2] != writes.generation(POSITION_WRITES)
            or kept.day != now.astimezone(IST).date()
        ):
            return False
        pnl = kept.closed + open_positions_pnl(rows, now)
        self._books_read = dataclasses.replace(kept, marks=writes.generation(MARK_WRITES), pnl=pnl)
        return True

    def _positions_to_mark(self) -> list[Position]:
        """The open positions as marking last read and wrote them, while no fill of this
        process has moved a position since, nothing but marks was written to one, and for
        at most a wall-clock second (another process's fill is seen within it; live, that
        is every second, as before); else read now."""
        kept, written, unmarked, wall = self._positions_kept or (None, -1, -1, 0.0)
        if (
            kept is not None
            and written == positions_written()
            and unmarked == writes.generation(POSITION_WRITES)
            and time.monotonic() - wall < POSITIONS_KEPT_S
        ):
            return kept
        unmarked = writes.generation(POSITION_WRITES)  # before the read: a write meanwhile is read next time
        rows = self._open_positions()
        self._positions_kept = (rows, positions_written(), unmarked, time.monotonic())
        return rows

    def _update_mark(self, p: Position, values: dict) -> bool:
        """``Position.objects.filter(pk, net_quantity, average_price).update(**values, updated_at=now)``,
        its statement compiled once per set of columns.

        Compiling the update cost more than running it, once a second per open position.
        The statement is the ORM's own; the parameters are adapted by the fields, as the
        ORM adapts them, and the first compile checks that they are the ORM's very ones
        (a set of columns whose parameters differed would keep going through the ORM).
        """
        values = {**values, "updated_at": timezone.now()}
        names = tuple(values)
        params = [self._position_fields[name].get_db_prep_save(v, connection) for name, v in values.items()]
        average = self._position_fields["average_price"].get_db_prep_value(p.average_price, connection)
        params += [average, p.net_quantity, p.pk]
        # A NULL in the condition is ``IS NULL`` in the ORM's statement, not ``= %s``.
        sql = self._mark_sql.get(names) if p.average_price is not None and p.net_quantity is not None else ""
        if not sql:
            query = Position.objects.filter(pk=p.pk, net_quantity=p.net_quantity, average_price=p.average_price)
            if sql is None:
                update = query.query.chain(UpdateQuery)
                update.add_update_values(values)
                compiled, orm_params = update.get_compiler(query.db).as_sql()
                self._mark_sql[names] = compiled if list(orm_params) == params else ""
            return bool(query.update(**values))
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount > 0

    def _open_positions(self) -> list[Position]:
        """The account's open positions, with the columns marking reads, each second.

        The statement is compiled once (compiling it cost more than running it) and
        only the marked columns are converted; the instruments come from the engine's
        own (a position on one it does not know is read from the database)."""
        rows = self._positions_query.objects(self.account)
        for p in rows:
            instrument = self._instruments_by_pk.get(p.instrument_id)
            if instrument is not None:
                p.instrument = instrument
        return rows

    def _keep_greeks(self, snapshot: ChainSnapshot) -> None:
        if not self._open_sids:
            return
        for i in np.flatnonzero(np.isin(snapshot.security_id, list(self._open_sids))):
            self._greeks[str(snapshot.security_id[i])] = (
                float(snapshot.delta[i]),
                float(snapshot.gamma[i]),
                float(snapshot.theta[i]),
                float(snapshot.vega[i]),
            )

    async def _push(self, now: dt.datetime) -> None:
        """Dashboard facts, published at most once a wall-clock second: the heartbeat
        (the book moved: marks, P&L, orders) every time, the broker's funds every 5 s,
        "analytics" every 10 s. The engine renders nothing and reads nothing for the
        dashboards: the web tier renders each panel once per fact."""
        wall = time.monotonic()
        if wall - self._pushed.get("funds", -1e9) >= 5.0:
            self._pushed["funds"] = wall
            # Failing, the risk panel shows the last known figures.
            funds = await self._outside(self.broker.funds, where="funds")
            if funds is not None:
                self._funds = {k: str(getattr(funds, k)) for k in ("available", "utilised", "total")}
                self._funds["as_of"] = now.isoformat()  # the risk panel says how old its margin is
                metrics.funds(self._funds, self._limits.margin_utilisation_cap_pct)
        await asend_now("heartbeat", {"engine": self.engine_id, "at": now.isoformat()}, account=self.account)
        if wall - self._pushed.get("analytics", -1e9) >= 10.0:
            self._pushed["analytics"] = wall
            await asend_now("analytics", {"at": now.isoformat()}, account=self.account)

    async def _push_chain(self, snapshot: ChainSnapshot) -> None:
        key = f"chain:{snapshot.underlying}"
        wall = time.monotonic()
        if wall - self._pushed.get(key, -1e9) < 3.0:
            return
        self._pushed[key] = wall
        await asend_now("chain", chain_fact(snapshot), account=self.account)

    async def _the_seconds_reads(self, now: dt.datetime) -> tuple[list[Order], Decimal | None]:
        """``_second_reads``, or, while nothing was live at the last read and this process
        has written no order, position or trade since (``trading.writes``), for at most a
        wall-clock second, and no configuration is due: what it read then, with no trip."""
        pnl = self._pnl_held(now)
        if pnl is not None and not self._config_due():
            self._config_held()  # nothing to read: the limits held are current
            self._config_second = self._last_second
            return [], (None if self.loss_guard.handled else pnl)
        return await _db(self._second_reads)(now)

    def _pnl_held(self, now: dt.datetime) -> Decimal | None:
        """Today's net P&L as the books hold it, without a read: the figure read at a second
        that found nothing live, carried across this engine's own marks since, while this
        process has written no order, position or trade, for at most ``writes.RECHECK_S`` of
        wall time (another process's write), on the same day. Else None: read it."""
        kept = self._books_read
        if (
            kept is not None
            and kept.written == writes.generation(writes.UNMARKED_BOOKS)
            and kept.marks == writes.generation(MARK_WRITES)
            and time.monotonic() - kept.wall < writes.RECHECK_S
            and kept.day == now.astimezone(IST).date()
        ):
            return kept.pnl
        return None

    def _held_basis_reads(self, now: dt.datetime) -> BasisReads | None:
        """The gate basis's reads (``risk.context.BasisReads``) as last read, while this process
        has written none of the tables they read (``writes.GATE_BASIS``), for at most
        ``writes.RECHECK_S`` of wall time (another process's write: a risk manager's HALT, an
        event day), on the same day. Else None: read them."""
        held = self._basis_reads
        if (
            held is not None
            and held[1] == writes.generation(writes.GATE_BASIS)
            and time.monotonic() - held[2] < writes.RECHECK_S
            and held[0].day == now.astimezone(IST).date()
        ):
            return held[0]
        return None

    def _read_basis_reads(self, now: dt.datetime) -> BasisReads:
        """``_held_basis_reads``, or read now and kept (on the database thread)."""
        reads = self._held_basis_reads(now)
        if reads is None:
            written = writes.generation(writes.GATE_BASIS)  # before the read: a write meanwhile is read next time
            reads = BasisReads.read(self.account, now.astimezone(IST).date())
            # Read inside a transaction, they may hold its writes, which may yet roll back: not kept.
            self._basis_reads = None if connection.in_atomic_block else (reads, written, time.monotonic())
        return reads

    def _load_basis(self, now: dt.datetime, funds, limits) -> GateBasis:
        """``GateBasis.load`` from what is held (the basis's reads, today's P&L), reading
        the rest (on the database thread)."""
        return GateBasis.load(
            account=self.account,
            now=now,
            funds=funds,
            limits=limits,
            reads=self._read_basis_reads(now),
            pnl=self._pnl_held(now),
        )

    def _basis_held(self, now: dt.datetime, funds, limits) -> GateBasis | None:
        """The gate's basis built from what is held, with no trip to the database thread,
        or None when anything must be read (on the event loop)."""
        if limits is None:
            return None
        reads, pnl = self._held_basis_reads(now), self._pnl_held(now)
        if reads is None or pnl is None:
            return None
        return GateBasis.load(account=self.account, now=now, funds=funds, limits=limits, reads=reads, pnl=pnl)

    def _read_books(self, now: dt.datetime) -> tuple[Decimal, bool]:
        """Today's net P&L and whether any order is live: one statement. The figure is kept
        (``_books_read``) when nothing is live."""
        writes.watch(connection)  # this thread's writes to the books move the generation
        self._write_marks()  # what is read includes the marks made so far
        # Before the read: a write meanwhile is read next time.
        written, marks = writes.generation(writes.UNMARKED_BOOKS), writes.generation(MARK_WRITES)
        closed, open_, any_live = daily_pnl_parts_and_any_live(self.account, now, LIVE_STATES)
        pnl = closed + open_
        self._books_read = (
            None if any_live else BooksRead(written, marks, time.monotonic(), now.astimezone(IST).date(), closed, pnl)
        )
        return pnl, any_live

    def _mark_and_read(self, now: dt.datetime) -> None:
        """After fills: the positions marked, and what the gate reads (today's P&L, the
        basis's reads) read again in the same trip, so that an intent later in this second
        does not wait for the database either."""
        self._mark_positions()
        if self._pnl_held(now) is None:
            self._read_books(now)
        self._read_basis_reads(now)

    def _second_reads(self, now: dt.datetime) -> tuple[list[Order], Decimal | None]:
        # Admin changes (strategy params and switches, risk limits) are picked up here,
        # in the trip the second makes anyway: at once after a save in this process, and
        # at least once a wall-clock second for another's (``_follow_config``); a snapshot
        # of the same second uses what was read (``_on_chain``).
        self._follow_config()
        self._config_second = self._last_second
        pnl, any_live = self._read_books(now)
        live = self.oms.live_rows() if any_live else []
        if not any_live:
            # The gate's basis read again in the same trip, so that a snapshot's first intent
            # finds it held as long as the P&L kept here, and does not wait for the database.
            # While an order is live the P&L is not kept: what an intent needs is read then.
            self._basis_reads = None
            self._read_basis_reads(now)
        if live or self.loss_guard.handled:
            return live, None  # sync may book fills: the P&L is read after it
        return live, pnl

    async def _daily_loss(self, now: dt.datetime, pnl: Decimal | None = None) -> None:
        """Past the daily net loss cap: REDUCING, flatten everything, HALTED until the next session.

        ``pnl``: today's net P&L when the caller has just read it.
        """
        if self.loss_guard.handled:
            return
        if pnl is None:
            pnl = await _db(daily_net_pnl)(self.account, now)
        metrics.daily_pnl(pnl, self._limits.daily_loss_cap)
        # Past the cap the broker's own figure decides (trading.orders.daily_loss); the
        # flatten then runs beside the loop, as a Kill All does.
        await self.loss_guard.check(now, pnl, self._limits.daily_loss_cap)

    async def _on_chain(self, snapshot: ChainSnapshot, now: dt.datetime) -> None:
        report = self.validator.validate(snapshot, now)
        self.health.observe_chain(snapshot, now, report)
        self.stats.snapshots += 1
        self.book.update_chain(snapshot)
        await self.broker.on_market_data()
        try:
            if self._config_second is None or self._config_second != self._last_second:
                # Not read yet in this second (a feed of chains alone, or the first item).
                if self._config_due():
                    await _db(self._follow_config)()
                else:
                    self._config_held()  # nothing to read: no trip to the database thread
            self._basis = None  # the gate reads the database once for this snapshot, at its first intent
            received = snapshot.received_at
            started = time.perf_counter()  # wall time: the simulated clock stands still within a tick
            for loaded in self.strategies:
                intents = self._contained(loaded, loaded.strategy.on_snapshot, snapshot)
                await self._submit_all(loaded, intents, now, received, started)
        finally:
            # The rows are buffered after the decisions, not before them: they wait in memory
            # for the writer's next flush either way, and nothing the strategies read changes.
            if self.writer is not None:
                self.writer.add_chain(snapshot)
        self._keep_greeks(snapshot)
        await self._push_chain(snapshot)

    def _contained(self, loaded: Loaded, method, *args):
        """One failing strategy never stops the engine or the others."""
        try:
            return list(method(*args) or ())
        except Exception:
            loaded.failures += 1
            self.stats.strategy_errors += 1
            metrics.strategy_error(loaded.key)
            log.exception("strategy failed", extra={"strategy": loaded.key})
            return []

    async def _submit_all(
        self, loaded: Loaded, intents, now: dt.datetime, snapshot_at: dt.datetime, started: float | None = None
    ) -> None:
        """Gate the intents in order, then send what passed, in order.

        Gating first keeps tick → intent short for the second leg (a probe's
        hedge is not held up by the probe's round trip to the broker). The
        basis counts each passed intent's lots and margin, so later intents see
        earlier ones. An exit is sent before any later entry is gated, and the
        basis is read again, so a loss it realises counts against that entry.
        """
        started = time.perf_counter() if started is None else started
        intents = list(intents)
        # The broker's margin for the whole basket (legs and hedge) before any entry of it is gated.
        self._basket = await basket_margin_per_lot(self.broker, intents, self.instruments)
        entered = await self._entry_reads(intents)
        refused_signals = set()
        queue: list[Passed] = []
        duplicates = set()
        for intent in intents:
            if intent.purpose == "HEDGE" and intent.signal_key in refused_signals:
                continue  # no hedge for an entry that was not sent
            if intent.purpose == "ENTRY" and intent.signal_key and intent.signal_key in entered:
                # A restarted or taken-over engine whose strategy state lags the
                # orders (killed between an order and the next state save) may
                # detect the same signal again: never enter it twice.
                log.error("duplicate entry refused", extra={"signal": intent.signal_key, "engine": self.engine_id})
                self.stats.refused += 1
                refused_signals.add(intent.signal_key)
                duplicates.add(intent.signal_key)
                if hasattr(loaded.strategy, "on_refused"):
                    loaded.strategy.on_refused(intent, "duplicate entry: the signal was entered before", now)
                continue
            self.stats.intents += 1
            if not intent.reduces_exposure and any(p.intent.reduces_exposure for p in queue):
                await self._send(loaded, queue, snapshot_at)
                entered.update(
                    p.intent.signal_key for p in queue if p.intent.purpose == "ENTRY" and p.intent.signal_key
                )
                queue, self._basis = [], None
            passed = await self._gate(loaded, intent, self.clock.now(), started)
            if passed is not None:
                queue.append(passed)
            elif intent.purpose in ("ENTRY", "SCALE"):
                refused_signals.add(intent.signal_key)
        await self._send(loaded, queue, snapshot_at)
        if getattr(loaded.strategy, "transitions", None):
            # A duplicate's signal row belongs to the first entry: leave its phase alone.
            await _db(self._record_transitions)(loaded, skip=duplicates)
        if intents:
            # Save the strategies' state with their orders, not 30 s later: an engine
            # that takes over after a crash then manages the open trades it finds.
            await _db(self._persist_states)()

    async def _entry_reads(self, intents: list) -> set[str]:
        """The signals of this batch's entries that were entered before, read in one trip
        together with the gate's basis (which the first entry needs anyway): tick → intent
        waits for one round trip to the database, not one per entry and one more for the basis."""
        keys = [i.signal_key for i in intents if i.purpose == "ENTRY" and i.signal_key]
        if not keys:
            return set()
        load_basis = self._basis is None and any(i.security_id in self.instruments for i in intents)
        funds = await self._outside(self.broker.funds, where="funds") if load_basis else None
        limits = self._limits if self._limits_fresh else None
        now = self.clock.now()

        def reads() -> tuple[set[str], GateBasis | None]:
            entered = {key for key in set(keys) if self._entered_query.rows(key)}
            basis = self._load_basis(now, funds, limits) if load_basis else None
            return entered, basis

        entered, basis = await _db(reads)()
        if basis is not None:
            self._basis, self._funds_due = basis, False
        return entered

    async def _due_funds(self) -> None:
        """The broker's funds for a basis that was loaded for exposure-reducing intents only.

        No rule reads margin for an intent that only reduces exposure, so its gate does
        not wait for the broker; the funds are read when the basis first needs them —
        for an intent that adds exposure, or before anything is sent, so that they are
        the funds from before the send, as they would have been read with the basis.
        """
        if self._basis is not None and self._funds_due:
            self._funds_due = False
            self._basis.funds = await self._outside(self.broker.funds, where="funds")

    async def _gate(self, loaded: Loaded, intent, intent_at: dt.datetime, started: float) -> Passed | None:
        instrument = self.instruments.get(intent.security_id)
        if instrument is None:
            log.error("intent for an unknown instrument", extra={"security_id": intent.security_id})
            return None
        now = self.clock.now()
        if self._basis is None:
            limits = self._limits if self._limits_fresh else None
            # No rule reads margin for an exposure-reducing intent: its gate does not wait for the
            # broker's funds (``_due_funds`` reads them when the basis first needs them).
            funds_due = intent.reduces_exposure
            funds = None if funds_due else await self._outside(self.broker.funds, where="funds")
            self._basis = self._basis_held(now, funds, limits) or await _db(self._load_basis)(now, funds, limits)
            self._funds_due = funds_due
        elif not intent.reduces_exposure:
            await self._due_funds()
        underlying_quote = self.book.get(self.underlying_ids.get(instrument.underlying.symbol, ""))
        ctx = self._basis.context(
            intent,
            instrument=instrument,
            now=now,
            quote=self.book.get(intent.security_id),
            underlying_price=underlying_quote.last if underlying_quote else None,
            feed_stale=self.health.is_stale(now),
        )
        if self.outages.active and not intent.reduces_exposure and ctx.trading_state == "ACTIVE":
            # The outside world is failing: no new exposure, whatever the stored state says.
            ctx = dataclasses.replace(ctx, trading_state="REDUCING")
        decision = self._broker_margin(intent, ctx)
        if decision is None:
            if self._basket is not None and self._basket.per_lot is not None and not intent.reduces_exposure:
                ctx = dataclasses.replace(ctx, margin_per_lot=self._basket.per_lot)
            decision = self.gate.check(intent, ctx)
        if not decision.allowed:
            self.stats.refused += 1
            await _db(record_refusal)(intent, decision, ctx, account=self.account)
            if hasattr(loaded.strategy, "on_refused"):
                loaded.strategy.on_refused(intent, f"{decision.rule}: {decision.reason}", now)
            return None
        self._basis.record(intent, decision.lots, ctx)
        gate_passed_at = self.clock.now()
        self.stats.tick_to_intent_ms.append((time.perf_counter() - started) * 1000)
        metrics.observe_tick_to_intent(time.perf_counter() - started)
        return Passed(intent, instrument, decision, intent_at, gate_passed_at)

    def _broker_margin(self, intent, ctx):
        """A refusal when the broker's margin calculator could not answer for this entry's basket."""
        if intent.reduces_exposure or self._basket is None or self._basket.error is None:
            return None
        return RiskDecision(False, f"the broker's margin calculator did not answer: {self._basket.error}", "margin", 0)

    async def _safety_net(self) -> None:
        self._safety_due = False
        state = await apply_pnl_exit(self.broker, self._limits, account=self.account, at=self.clock.now())
        if state is not None:
            self._pnl_exit = state

    async def _send(self, loaded: Loaded, queue: list[Passed], snapshot_at: dt.datetime) -> None:
        if queue:
            await self._due_funds()
        for passed in queue:
            intent = passed.intent
            signal = await _db(self._signal)(loaded, intent) if intent.signal_key else None
            if loaded.row is None:
                loaded.row = await _db(Strategy.objects.get)(pk=loaded.row_id)
            for quantity in passed.decision.slices:
                self.stats.orders += 1
                try:
                    order = await self.oms.submit(
                        instrument=passed.instrument,
                        side=intent.side,
                        quantity=quantity,
                        limit_price=intent.limit_price,
                        purpose=intent.purpose,
                        order_type=Order.Type.LIMIT if intent.limit_price else Order.Type.MARKET,
                        strategy=loaded.row,
                        signal=signal,
                        snapshot_at=snapshot_at,
                        intent_at=passed.intent_at,
                        gate_passed_at=passed.gate_passed_at,
                        check_slippage_rule=False,  # the gate ran the slippage rule
                        reason=intent.reason,
                    )
                except ExitClaimed as exc:
                    # Another exit (a Kill All, a manual Exit) already covers these units:
                    # never sell them twice. The strategy hears that exit's fills.
                    log.info("exit already covered", extra={"strategy": loaded.key, "why": str(exc)})
                    break
                if intent.purpose in ("ENTRY", "SCALE") and order.state in (Order.State.OPEN, Order.State.PARTIAL):
                    self._resting_entries.add(order.pk)

    def _signal(self, loaded: Loaded, intent) -> Signal:
        signal = Signal.objects.filter(key=intent.signal_key).first()
        if signal is None:  # the probe comes first, so a signal is keyed on its option
            option = self.instruments[intent.security_id]
            with transaction.atomic():
                signal = Signal.objects.create(
                    strategy_id=loaded.row_id,
                    instrument=option,
                    key=intent.signal_key,
                    features=intent.features,
                    phase=Signal.Phase.PROBE,
                    detected_at=self.clock.now(),
                )
                audit_append(
                    "signal.detected",
                    actor=actors.engine(self.engine_id),
                    subject=f"signal:{signal.key}",
                    payload={"strategy": loaded.key, "features": intent.features, "instrument": option.security_id},
                    at=self.clock.now(),
                )
                publish_on_commit("signal", {"key": signal.key}, account=self.account)
        return signal

    def _record_transitions(self, loaded: Loaded, skip: set[str] | frozenset[str] = frozenset()) -> None:
        transitions = getattr(loaded.strategy, "transitions", None)
        if not transitions:
            return
        pending, loaded.strategy.transitions = list(transitions), []
        for t in pending:
            if t.signal_key in skip:
                continue
            phase = {
                "PROBE": "PROBE",
                "SCALED": "SCALED",
                "EXITING": "EXITING",
                "CLOSED": "CLOSED",
                "REFUSED": "REFUSED",
            }.get(t.new)
            with transaction.atomic():
                fields = {"phase": phase} if phase else {}
                if t.new == "SCALED":
                    fields["confirmed_at"] = t.at
                if t.new in ("CLOSED", "REFUSED"):
                    fields["closed_at"] = t.at
                if fields:
                    Signal.objects.filter(key=t.signal_key).update(**fields)
                audit_append(
                    "signal.transition",
                    actor=actors.engine(self.engine_id),
                    subject=f"signal:{t.signal_key}",
                    payload={"strategy": loaded.key, "from": t.old, "to": t.new, "reason": t.reason},
                    at=t.at,
                )
            log.info(
                "signal transition", extra={"signal": t.signal_key, "from": t.old, "to": t.new, "reason": t.reason}
            )
