"""The trading engine: one asyncio loop from feed to fills.

feed → validation → book and baselines (inside the strategies) → strategies →
risk gate → OMS → audit → publish on commit. ORM work goes through
``sync_to_async`` in short transactions; a failing strategy is contained and
reported; a dead channel layer only loses dashboard events. Before trading it
recovers the OMS and reconciles with the broker (HALTED on any break).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
from asgiref.sync import sync_to_async
from django.db import transaction
from django.utils import timezone

from audit.chain import append as audit_append
from marketdata.anomaly.training import live_scorers, live_versions
from marketdata.book import QuoteBook
from marketdata.feeds.base import ChainSnapshot, LtpTick
from marketdata.models import Instrument
from marketdata.validation import ChainValidator, FeedHealth
from quanthub.clock import Clock
from quanthub.sql import Prepared
from risk.breakers import VixMonitor, enforce_daily_loss
from risk.breakers import clear as clear_breaker
from risk.breakers import trip as trip_breaker
from risk.context import GateBasis, daily_net_pnl
from risk.gate import RiskGate, record_refusal
from risk.models import RiskLimits
from trading.alerts import raise_alert
from trading.brokers.ratelimit import RateLimiter
from trading.events import asend_now, publish_on_commit
from trading.models import EngineHeartbeat, Order, Position, Signal, Strategy
from trading.orders.accounting import mark_to_market
from trading.orders.exits import send_requested_exits
from trading.orders.manager import OrderManager, OrderRefused
from trading.orders.reconcile import reconcile
from trading.strategies.base import to_tick
from trading.strategies.registry import get_strategy_class
from trading.strategies.vol_oi.strategy import VolOiStrategy

log = logging.getLogger(__name__)
PHASES = {p: p for p in Signal.Phase.values}


def _db(fn):
    return sync_to_async(fn, thread_sensitive=True)


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
    ):
        self.feed, self.broker, self.clock, self.book, self.account = feed, broker, clock, book, account
        self.writer = writer
        limits_now = limits()
        self._limits = limits_now  # refreshed at every snapshot: admin changes reach the limiter too
        self.limiter = RateLimiter(
            rate=lambda: self._limits.order_rate_per_s,
            max_modifications=lambda: self._limits.max_modifications_per_order,
        )
        self.oms = OrderManager(broker, self.limiter, account=account, clock=clock, book=book)
        self.gate = RiskGate()
        self.validator = ChainValidator()
        self.health = FeedHealth(chain_stale_s=limits_now.feed_stale_chain_s, ltp_stale_s=limits_now.feed_stale_ltp_s)
        self.vix = VixMonitor(
            sigma=float(limits_now.vix_breaker_sigma), normalise_minutes=float(limits_now.vix_normalise_minutes)
        )
        self.strategies: list[Loaded] = []
        self.instruments: dict[str, Instrument] = {}
        self.underlying_ids: dict[str, str] = {}
        self.stats = EngineStats()
        self.engine_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.reconcile_every_s = reconcile_every_s
        self._stopping = False
        self._loss_handled = False
        self._last_second: dt.datetime | None = None
        self._last_reconcile: dt.datetime | None = None
        self._pushed: dict[str, float] = {}
        self._open_sids: set[str] = set()
        self._funds: dict[str, str] | None = None  # the broker's last funds report, for the risk panel
        self._greeks: dict[str, tuple[float, float, float, float]] = {}
        self._exits_checked = -1e9  # time.monotonic() of the last look for requested exits
        self._mark_needed = True  # mark once at the first second: a restart may find positions open
        self._limits_key: tuple | None = None  # (pk, version, updated_at) of the limits held in _limits
        self._limits_fresh = False  # read at this snapshot: the gate may use them as they are
        self._basis: GateBasis | None = None  # the gate's database reads, for the current snapshot or second
        self._beat_created = False
        self._config_queries: tuple[Prepared, Prepared] | None = None
        self._last_beat_wall: float | None = None
        self._anomaly_versions: dict[str, int] | None = None
        self.started = asyncio.Event()

    # --- lifecycle ---------------------------------------------------------------------

    def stop(self) -> None:
        """Stop taking entries; the loop finishes its unit of work and exits."""
        self._stopping = True
        for loaded in self.strategies:
            loaded.strategy.entries_enabled = False

    async def start(self) -> None:
        await _db(self._load_instruments)()
        await _db(self._load_strategies)()
        await _db(self._load_anomaly_models)()
        counts = await self.oms.recover()
        result = await reconcile(self.broker, account=self.account)
        log.info("engine started", extra={"engine": self.engine_id, "recovered": counts, "breaks": len(result.breaks)})
        await _db(self._beat)("ACTIVE")
        self.started.set()

    async def run(self) -> EngineStats:
        await self.start()
        try:
            async for item in self.feed:
                await self.tick(item)
                if self._stopping:
                    break
        finally:
            await self.shutdown()
        return self.stats

    async def shutdown(self) -> None:
        await self.feed.close()
        if self.writer is not None:
            await _db(self.writer.flush)(close_bars=True)
        await _db(self._mark_positions)()
        await _db(self._persist_states)()
        await _db(self._beat)("STOPPED")
        log.info(
            "engine stopped",
            extra={
                "engine": self.engine_id,
                "stats": {k: v for k, v in vars(self.stats).items() if k != "tick_to_intent_ms"},
            },
        )

    # --- set-up from the database ----------------------------------------------------------

    def _load_instruments(self) -> None:
        rows = Instrument.objects.filter(is_active=True).select_related("underlying")
        self.instruments = {i.security_id: i for i in rows}
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
            self._limits_key = key
        self._limits_fresh = True

    def _persist_states(self) -> None:
        for loaded in self.strategies:
            Strategy.objects.filter(pk=loaded.row_id).update(state=loaded.strategy.get_state())

    def _entered(self, signal_key: str) -> bool:
        return Order.objects.filter(signal__key=signal_key, purpose=Order.Purpose.ENTRY).exists()

    def _beat(self, role: str) -> None:
        # beat_at is wall-clock time (the health check and the dashboards judge
        # liveness by it); market_time is the engine's clock, simulated in replays.
        wall = timezone.now()
        market = self.clock.now()
        values = {
            "role": role,
            "beat_at": wall,
            "market_time": market,
            "feed_health": self.health.as_dict(market),
            "stats": {
                **{k: v for k, v in vars(self.stats).items() if k != "tick_to_intent_ms"},
                "funds": self._funds,
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

    async def _vix(self, tick: LtpTick) -> None:
        verdict = self.vix.observe(tick.exchange_time, tick.ltp)
        if verdict == "trip":
            await _db(trip_breaker)(
                "vix",
                f"India VIX jumped to {tick.ltp:.2f} (> {self.vix.sigma:g}σ of today's one-minute changes)",
                at=tick.exchange_time,
                account=self.account,
            )
        elif verdict == "clear":
            await _db(clear_breaker)("vix", at=tick.exchange_time, actor="breaker:vix", account=self.account)

    async def _every_second(self, now: dt.datetime) -> None:
        # Exits requested from outside (the API, the dashboard) go out from here, so their fills
        # reach the strategies. Looked for once a wall-clock second, not once a simulated one.
        if time.monotonic() - self._exits_checked >= 1.0:
            self._exits_checked = time.monotonic()
            await send_requested_exits(self.oms, self.book, account=self.account)
        self._basis, self._limits_fresh = None, False  # a new batch: the gate reads the database again
        # One trip to the database thread for what every second needs: the live
        # orders and, while nothing is live (most seconds), today's net P&L.
        live, pnl = await _db(self._second_reads)(now)
        orders_before = self.stats.orders
        events = await self.oms.sync(live=live)
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
            await _db(self._mark_positions)()
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
            await reconcile(self.broker, account=self.account)
            await _db(self._load_anomaly_models)()
            if self.writer is not None and self.writer.pending:
                await _db(self.writer.flush)()
            await _db(self._persist_states)()

    async def _work_exits(self, order_ids: list[int]) -> None:
        """A resting exit follows the touch. A stop or a take-profit is sent at the mid;
        if the market moves away it would rest unfilled for the rest of the day. Each
        second it is re-priced to the bid (sell) or ask (buy) within the modification
        cap; past the cap it is cancelled and sent again at the touch (a new order with
        a new budget), and an alert says so."""
        resting = await _db(
            lambda: list(
                Order.objects.filter(
                    pk__in=order_ids, state__in=[Order.State.OPEN, Order.State.PARTIAL]
                ).select_related("instrument", "strategy", "signal")
            )
        )()
        for order in resting:
            quote = self.book.get(order.instrument.security_id)
            touch = (quote.bid if order.side == Order.Side.SELL else quote.ask) if quote is not None else 0
            if touch <= 0 or order.limit_price is None:
                continue
            price = to_tick(touch)
            away = price < order.limit_price if order.side == Order.Side.SELL else price > order.limit_price
            if not away:
                continue
            try:
                await self.oms.reprice(order, price)
            except OrderRefused as exc:
                await self._resend_exit(order, price, str(exc))
            except Exception as exc:  # a reject or timeout: the next second tries again
                log.warning("exit re-price failed", extra={"order": order.client_order_id, "error": repr(exc)})

    async def _resend_exit(self, order: Order, price, why: str) -> None:
        from trading.alerts import raise_alert

        cancelled = await self.oms.cancel(order, reason=f"re-sent at the touch: {why}")
        left = cancelled.quantity - cancelled.filled_quantity
        if cancelled.state != Order.State.CANCELLED or left <= 0:
            return
        await self.oms.submit(
            instrument=order.instrument,
            side=order.side,
            quantity=left,
            limit_price=price,
            purpose=Order.Purpose.EXIT,
            strategy=order.strategy,
            signal=order.signal,
            priority=True,
            check_slippage_rule=False,
            reason=order.reason,
        )
        await _db(raise_alert)(
            "WARNING",
            "oms",
            f"Exit {order.client_order_id} re-sent at {price}",
            f"{order.instrument.trading_symbol}: {why}",
            account=self.account,
        )

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
        rows = list(Position.objects.filter(account=self.account).exclude(net_quantity=0).select_related("instrument"))
        self._open_sids = {p.instrument.security_id for p in rows}
        for p in rows:
            sid = p.instrument.security_id
            values: dict = {}
            quote = self.book.get(sid)
            if quote is not None and quote.bid > 0 and quote.ask > 0:
                mark_to_market(p, to_tick((quote.bid + quote.ask) / 2))
                values.update(last_price=p.last_price, unrealised_pnl=p.unrealised_pnl)
            greeks = (1.0, 0.0, 0.0, 0.0) if p.instrument.kind == "FUT" else self._greeks.get(sid)
            if greeks is not None:
                values.update(delta=greeks[0], gamma=greeks[1], theta=greeks[2], vega=greeks[3])
            level = levels.get(sid)
            if level is not None and p.opened_at is not None:
                values.update(
                    stop_price=to_tick(level.stop),
                    target_price=to_tick(level.target),
                    ttl_seconds=max(int((level.deadline - p.opened_at).total_seconds()), 0),
                )
            if values:
                Position.objects.filter(pk=p.pk, net_quantity=p.net_quantity, average_price=p.average_price).update(
                    **values, updated_at=timezone.now()
                )

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
        """Dashboard pushes, called at most once a wall-clock second: the panels every
        time, the broker's funds every 5 s, latency and alpha decay every 10 s. Each
        push re-renders its panels once for all pages."""
        wall = time.monotonic()
        if wall - self._pushed.get("funds", -1e9) >= 5.0:
            self._pushed["funds"] = wall
            try:
                funds = await self.broker.funds()
                self._funds = {k: str(getattr(funds, k)) for k in ("available", "utilised", "total")}
            except Exception as exc:  # the risk panel shows the last known figures
                log.warning("funds unavailable", extra={"error": repr(exc)})
        await asend_now("heartbeat", {"engine": self.engine_id, "at": now.isoformat()}, account=self.account)
        if wall - self._pushed.get("analytics", -1e9) >= 10.0:
            self._pushed["analytics"] = wall
            await asend_now("analytics", {}, account=self.account)

    async def _push_chain(self, snapshot: ChainSnapshot) -> None:
        key = f"chain:{snapshot.underlying}"
        wall = time.monotonic()
        if wall - self._pushed.get(key, -1e9) < 3.0:
            return
        self._pushed[key] = wall
        from trading.dashboard import chain_rows

        await asend_now(
            "chain", {"underlying": snapshot.underlying, "rows": chain_rows(snapshot)}, account=self.account
        )

    def _second_reads(self, now: dt.datetime) -> tuple[list[Order], Decimal | None]:
        live = self.oms.live_orders()
        if live or self._loss_handled:
            return live, None  # sync may book fills: the P&L is read after it
        return live, daily_net_pnl(self.account, now)

    async def _daily_loss(self, now: dt.datetime, pnl: Decimal | None = None) -> None:
        """Past the daily net loss cap: REDUCING, flatten everything, HALTED until the next session.

        ``pnl``: today's net P&L when the caller has just read it.
        """
        if self._loss_handled:
            return
        if pnl is None:
            pnl = await _db(daily_net_pnl)(self.account, now)
        if pnl <= -self._limits.daily_loss_cap:
            self._loss_handled = True
            await enforce_daily_loss(
                broker=self.broker,
                oms=self.oms,
                net_pnl=pnl,
                cap=self._limits.daily_loss_cap,
                now=now,
                account=self.account,
            )

    async def _on_chain(self, snapshot: ChainSnapshot, now: dt.datetime) -> None:
        report = self.validator.validate(snapshot, now)
        self.health.observe_chain(snapshot, now, report)
        self.stats.snapshots += 1
        self.book.update_chain(snapshot)
        await self.broker.on_market_data()
        if self.writer is not None:
            self.writer.add_chain(snapshot)
        await _db(self._refresh_config)()
        self._basis = None  # the gate reads the database once for this snapshot, at its first intent
        received = snapshot.received_at
        started = time.perf_counter()  # wall time: the simulated clock stands still within a tick
        for loaded in self.strategies:
            intents = self._contained(loaded, loaded.strategy.on_snapshot, snapshot)
            await self._submit_all(loaded, intents, now, received, started)
        self._keep_greeks(snapshot)
        await self._push_chain(snapshot)

    def _contained(self, loaded: Loaded, method, *args):
        """One failing strategy never stops the engine or the others."""
        try:
            return list(method(*args) or ())
        except Exception:
            loaded.failures += 1
            self.stats.strategy_errors += 1
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
        refused_signals = set()
        queue: list[Passed] = []
        duplicates = set()
        for intent in intents:
            if intent.purpose == "HEDGE" and intent.signal_key in refused_signals:
                continue  # no hedge for an entry that was not sent
            if intent.purpose == "ENTRY" and intent.signal_key and await _db(self._entered)(intent.signal_key):
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

    async def _gate(self, loaded: Loaded, intent, intent_at: dt.datetime, started: float) -> Passed | None:
        instrument = self.instruments.get(intent.security_id)
        if instrument is None:
            log.error("intent for an unknown instrument", extra={"security_id": intent.security_id})
            return None
        now = self.clock.now()
        if self._basis is None:
            funds = await self.broker.funds()
            limits = self._limits if self._limits_fresh else None
            self._basis = await _db(GateBasis.load)(account=self.account, now=now, funds=funds, limits=limits)
        underlying_quote = self.book.get(self.underlying_ids.get(instrument.underlying.symbol, ""))
        ctx = self._basis.context(
            intent,
            instrument=instrument,
            now=now,
            quote=self.book.get(intent.security_id),
            underlying_price=underlying_quote.last if underlying_quote else None,
            feed_stale=self.health.is_stale(now),
        )
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
        return Passed(intent, instrument, decision, intent_at, gate_passed_at)

    async def _send(self, loaded: Loaded, queue: list[Passed], snapshot_at: dt.datetime) -> None:
        for passed in queue:
            intent = passed.intent
            signal = await _db(self._signal)(loaded, intent) if intent.signal_key else None
            if loaded.row is None:
                loaded.row = await _db(Strategy.objects.get)(pk=loaded.row_id)
            for quantity in passed.decision.slices:
                self.stats.orders += 1
                await self.oms.submit(
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
                    actor=f"strategy:{loaded.key}",
                    subject=f"signal:{signal.key}",
                    payload={"features": intent.features, "instrument": option.security_id},
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
                    actor=f"strategy:{loaded.key}",
                    subject=f"signal:{t.signal_key}",
                    payload={"from": t.old, "to": t.new, "reason": t.reason},
                    at=t.at,
                )
            log.info(
                "signal transition", extra={"signal": t.signal_key, "from": t.old, "to": t.new, "reason": t.reason}
            )
