"""Order management: write-ahead orders, conditional state changes, and
outcomes resolved by lookup, never by resending.

The path of one order:

1. the intent is committed: an ``Order`` row in NEW with its client order id
   (sent to the broker as the correlation id) and an audit record, in one
   transaction — before any broker call;
2. NEW → SUBMITTING, a conditional update;
3. the rate limiter grants a slot (exits and Kill All in the priority lane);
4. the broker call, outside any transaction, with a timeout;
5. SUBMITTING → OPEN / PARTIAL / FILLED / REJECTED (code and reason) or
   UNKNOWN (timeout, reset, unparsable reply). An UNKNOWN order is looked up
   by its correlation id until the broker says what happened.

Every change is ``filter(pk=…, state__in=OLD).update(state=NEW)``: zero rows
means someone else already moved it, so running anything twice is harmless.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from asgiref.sync import sync_to_async
from django.db import transaction

from audit.chain import append as audit_append
from marketdata.book import Quote
from quanthub.clock import Clock, RealClock
from quanthub.sql import Prepared
from risk.models import RiskLimits
from trading.brokers.base import (
    AuthExpired,
    Broker,
    BrokerOrder,
    BrokerStatus,
    OrderType,
    PlaceRequest,
    Rejected,
    Side,
    Throttled,
    Unavailable,
    Unknown,
)
from trading.brokers.ratelimit import ModificationCapExceeded, RateLimiter
from trading.checkpoints import checkpoint
from trading.events import publish_on_commit
from trading.models import Fill, Order
from trading.strategies.base import FillEvent, OrderUpdate

log = logging.getLogger(__name__)
S = Order.State

ALLOWED = {
    S.NEW: {S.SUBMITTING, S.CANCELLED, S.REJECTED},
    S.SUBMITTING: {S.OPEN, S.PARTIAL, S.FILLED, S.REJECTED, S.UNKNOWN, S.CANCELLED},
    S.OPEN: {S.PARTIAL, S.FILLED, S.CANCELLED, S.REJECTED, S.UNKNOWN},
    S.PARTIAL: {S.PARTIAL, S.FILLED, S.CANCELLED},
    S.UNKNOWN: {S.OPEN, S.PARTIAL, S.FILLED, S.CANCELLED, S.REJECTED},
    S.FILLED: set(),
    S.CANCELLED: set(),
    S.REJECTED: set(),
}
STAMP = {
    S.SUBMITTING: "submitting_at",
    S.OPEN: "open_at",
    S.PARTIAL: "partial_at",
    S.FILLED: "filled_at",
    S.CANCELLED: "cancelled_at",
    S.REJECTED: "rejected_at",
    S.UNKNOWN: "unknown_at",
}
FROM_BROKER = {
    BrokerStatus.TRANSIT: S.OPEN,
    BrokerStatus.PENDING: S.OPEN,
    BrokerStatus.PART_TRADED: S.PARTIAL,
    BrokerStatus.TRADED: S.FILLED,
    BrokerStatus.CANCELLED: S.CANCELLED,
    BrokerStatus.REJECTED: S.REJECTED,
    BrokerStatus.EXPIRED: S.CANCELLED,
}
EXIT_PURPOSES = (Order.Purpose.EXIT, Order.Purpose.KILL)


class OrderRefused(Exception):
    """The OMS refused to send (slippage, modification or requote cap); the reason is recorded."""


def default_client_order_id() -> str:
    # ≤ 25 characters of [A-Z0-9]: safe as Dhan's correlationId.
    return "QH" + secrets.token_hex(9).upper()


@dataclass(frozen=True, slots=True)
class SlippageCheck:
    ok: bool
    reason: str
    expected_slippage: Decimal
    spread_pct: Decimal


def check_slippage(side: str, quantity: int, quote: Quote | None, limits: RiskLimits) -> SlippageCheck:
    """Refuse when expected slippage per unit exceeds ``max_slippage_per_leg``
    or the spread exceeds ``max_spread_pct_of_mid`` % of mid. Pure."""
    if quote is None or quote.bid <= 0 or quote.ask <= 0 or quote.ask < quote.bid:
        return SlippageCheck(False, "no usable quote for the slippage check", Decimal("0"), Decimal("0"))
    mid = Decimal(str(quote.mid))
    spread = Decimal(str(quote.ask)) - Decimal(str(quote.bid))
    spread_pct = (spread / mid * 100).quantize(Decimal("0.001"))
    size = quote.ask_qty if side == Side.BUY else quote.bid_qty
    # Past the top of book each further top-size slice costs about one more tick.
    layers = max((quantity - 1) // max(size, 1), 0)
    expected = (spread / 2 + Decimal("0.05") * layers).quantize(Decimal("0.01"))
    if spread_pct > limits.max_spread_pct_of_mid:
        return SlippageCheck(
            False, f"spread {spread_pct}% of mid exceeds {limits.max_spread_pct_of_mid}%", expected, spread_pct
        )
    if expected > limits.max_slippage_per_leg:
        return SlippageCheck(
            False, f"expected slippage ₹{expected} exceeds ₹{limits.max_slippage_per_leg} per leg", expected, spread_pct
        )
    return SlippageCheck(True, "", expected, spread_pct)


def _db(fn):
    return sync_to_async(fn, thread_sensitive=True)


class OrderManager:
    def __init__(
        self,
        broker: Broker,
        limiter: RateLimiter,
        *,
        account: str = "default",
        clock: Clock | None = None,
        book=None,
        id_factory: Callable[[], str] = default_client_order_id,
        call_timeout_s: float = 3.0,
        unknown_resolve_s: float = 3.0,
        limits: Callable[[], RiskLimits] = RiskLimits.active,
    ):
        self.broker = broker
        self.limiter = limiter
        self.account = account
        self.clock = clock or RealClock()
        self.book = book
        self.id_factory = id_factory
        self.call_timeout_s = call_timeout_s
        self.unknown_resolve_s = unknown_resolve_s
        self.limits = limits
        # Fill and order events for the strategies, whichever call recorded them
        # (a fill can arrive with the acknowledgement); sync() hands them over.
        self._events: list[FillEvent | OrderUpdate] = []
        self._any_live: Prepared | None = None

    # --- state changes (sync; called through _db) ----------------------------------

    def _transition(self, order_id: int, old: set | tuple, new: str, *, audit: bool = True, **fields) -> bool:
        olds = [s for s in old if new in ALLOWED[s]]
        if not olds:
            return False
        now = self.clock.now()
        if new in STAMP:
            fields.setdefault(STAMP[new], now)
        with transaction.atomic():
            updated = Order.objects.filter(pk=order_id, state__in=olds).update(state=new, **fields)
            if updated and audit and new not in (S.SUBMITTING, S.OPEN, S.PARTIAL):
                order = Order.objects.get(pk=order_id)
                audit_append(
                    f"order.{new.lower()}",
                    actor="oms",
                    subject=f"order:{order.client_order_id}",
                    payload={
                        "state": new,
                        "filled": order.filled_quantity,
                        "reason": order.reason,
                        "code": order.reject_code,
                        "broker_order_id": order.broker_order_id,
                    },
                    at=now,
                )
            if updated:
                publish_on_commit("order", {"id": order_id, "state": new}, account=self.account)
        return bool(updated)

    def _create(self, **values) -> Order:
        now = self.clock.now()
        with transaction.atomic():
            order = Order.objects.create(account=self.account, committed_at=now, **values)
            audit_append(
                "order.intent",
                actor="oms",
                subject=f"order:{order.client_order_id}",
                payload={
                    "instrument": order.instrument.security_id,
                    "side": order.side,
                    "quantity": order.quantity,
                    "limit_price": order.limit_price,
                    "purpose": order.purpose,
                    "state": order.state,
                    "strategy": order.strategy.key if order.strategy_id else None,
                    "signal": order.signal.key if order.signal_id else None,
                    "reason": order.reason,
                },
                at=now,
            )
        return order

    # --- submit -----------------------------------------------------------------------

    async def submit(
        self,
        *,
        instrument,
        side: str,
        quantity: int,
        limit_price: Decimal | None,
        purpose: str = Order.Purpose.ENTRY,
        strategy=None,
        signal=None,
        order_type: str = Order.Type.LIMIT,
        snapshot_at: dt.datetime | None = None,
        intent_at: dt.datetime | None = None,
        gate_passed_at: dt.datetime | None = None,
        priority: bool | None = None,
        parent: Order | None = None,
        check_slippage_rule: bool = True,
        reason: str = "",
    ) -> Order:
        priority = purpose in EXIT_PURPOSES if priority is None else priority
        values = {
            "client_order_id": self.id_factory(),
            "strategy": strategy,
            "signal": signal,
            "instrument": instrument,
            "side": side,
            "purpose": purpose,
            "order_type": order_type,
            "quantity": quantity,
            "limit_price": limit_price,
            "first_price": limit_price,
            "snapshot_at": snapshot_at,
            "intent_at": intent_at or self.clock.now(),
            "gate_passed_at": gate_passed_at,
            "parent": parent,
            "reason": reason,
        }
        if check_slippage_rule and purpose not in EXIT_PURPOSES and self.book is not None:
            limits = await _db(self.limits)()
            verdict = check_slippage(side, quantity, self.book.get(instrument.security_id), limits)
            if not verdict.ok:
                order = await _db(self._create)(
                    state=S.REJECTED,
                    reject_code="SLIPPAGE",
                    rejected_at=self.clock.now(),
                    **{**values, "reason": verdict.reason},
                )
                log.warning(
                    "order refused before sending",
                    extra={"client_order_id": order.client_order_id, "reason": verdict.reason},
                )
                return order
        checkpoint("oms.before_commit")
        order = await _db(self._create)(**values)
        checkpoint("oms.after_commit")
        return await self.send(order, priority=priority)

    async def send(self, order: Order, *, priority: bool = False) -> Order:
        """Send a committed NEW order (used by submit, and for slices)."""
        if not await _db(self._transition)(order.pk, {S.NEW}, S.SUBMITTING):
            return await _db(Order.objects.get)(pk=order.pk)
        request = PlaceRequest(
            correlation_id=order.client_order_id,
            security_id=order.instrument.security_id,
            exchange_segment=order.instrument.exchange_segment,
            side=Side(order.side),
            quantity=order.quantity,
            order_type=OrderType(order.order_type),
            price=order.limit_price,
            priority=priority,
        )
        for attempt in range(3):
            await self.limiter.acquire(priority=priority)
            sent_at = self.clock.now()
            await _db(Order.objects.filter(pk=order.pk).update)(sent_at=sent_at)
            checkpoint("oms.before_broker_call")
            try:
                ack = await asyncio.wait_for(self.broker.place_order(request), timeout=self.call_timeout_s)
            except Throttled as exc:
                if attempt < 2 and exc.retry_after <= 1.0:
                    await asyncio.sleep(exc.retry_after)
                    continue
                await _db(self._transition)(
                    order.pk, {S.SUBMITTING}, S.REJECTED, reject_code="THROTTLED", reason=str(exc)
                )
                break
            except Rejected as exc:
                await _db(self._transition)(
                    order.pk, {S.SUBMITTING}, S.REJECTED, reject_code=exc.code[:40], reason=exc.message
                )
                log.warning(
                    "order rejected",
                    extra={"client_order_id": order.client_order_id, "code": exc.code, "reason": exc.message},
                )
                break
            except (AuthExpired, Unavailable) as exc:
                # Refused before the broker took it: nothing exists to look up.
                await _db(self._transition)(
                    order.pk, {S.SUBMITTING}, S.REJECTED, reject_code=type(exc).__name__.upper()[:40], reason=str(exc)
                )
                break
            except (Unknown, TimeoutError, ConnectionError) as exc:
                await _db(self._transition)(
                    order.pk, {S.SUBMITTING}, S.UNKNOWN, reason=f"outcome unknown: {exc!r}"[:500]
                )
                log.warning("order outcome unknown", extra={"client_order_id": order.client_order_id})
                await self.resolve_unknown(order)
                break
            checkpoint("oms.after_ack")
            await self._apply_ack(order, ack)
            break
        return await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)

    async def _apply_ack(self, order: Order, ack: BrokerOrder) -> None:
        state = FROM_BROKER[ack.status]
        now = self.clock.now()
        fields = {"broker_order_id": ack.broker_order_id, "acked_at": now}
        if state == S.REJECTED:
            fields.update(reject_code=ack.reject_code[:40], reason=ack.reason)
        await _db(self._transition)(order.pk, {S.SUBMITTING, S.UNKNOWN}, state, **fields)
        if ack.filled_quantity:
            await self._apply_trades(order.pk)

    async def resolve_unknown(self, order: Order) -> bool:
        """Look the order up by correlation id for up to ``unknown_resolve_s``."""
        deadline = asyncio.get_running_loop().time() + self.unknown_resolve_s
        delay = 0.05
        while True:
            try:
                found = await asyncio.wait_for(
                    self.broker.get_order_by_correlation(order.client_order_id), timeout=self.call_timeout_s
                )
            except (Unknown, Unavailable, TimeoutError, ConnectionError, Throttled):
                found = None
                looked = False
            else:
                looked = True
            if found is not None:
                await self._apply_ack(order, found)
                return True
            if asyncio.get_running_loop().time() >= deadline:
                if looked:
                    await _db(self._transition)(
                        order.pk,
                        {S.UNKNOWN},
                        S.REJECTED,
                        reject_code="NOT_AT_BROKER",
                        reason="the broker has no order with this correlation id",
                    )
                    return True
                return False  # stays UNKNOWN; reconciliation keeps looking
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # --- cancel and requote -----------------------------------------------------------

    async def cancel(self, order: Order, *, reason: str = "cancelled") -> Order:
        if order.broker_order_id and order.state in (S.OPEN, S.PARTIAL):
            await self.limiter.acquire(priority=order.purpose in EXIT_PURPOSES)
            try:
                await asyncio.wait_for(self.broker.cancel_order(order.broker_order_id), timeout=self.call_timeout_s)
            except Rejected as exc:
                log.info(
                    "cancel refused by broker", extra={"client_order_id": order.client_order_id, "reason": exc.message}
                )
            await self._sync_one(order.pk)
            await _db(Order.objects.filter(pk=order.pk, state=S.CANCELLED, reason="").update)(reason=reason)
        elif order.state == S.NEW:
            await _db(self._transition)(order.pk, {S.NEW}, S.CANCELLED, reason=reason)
        return await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)

    async def requote(self, order: Order, new_price: Decimal) -> Order:
        limits = await _db(self.limits)()
        first = order.first_price or order.limit_price
        if order.requote_count >= limits.max_requotes:
            raise OrderRefused(f"requote cap reached ({limits.max_requotes})")
        if first is not None and abs(new_price - first) > limits.max_requote_chase:
            raise OrderRefused(f"requote to {new_price} chases more than ₹{limits.max_requote_chase} from {first}")
        try:
            self.limiter.check_modification(order.modification_count)
        except ModificationCapExceeded as exc:
            raise OrderRefused(str(exc)) from None
        await self.limiter.acquire(priority=order.purpose in EXIT_PURPOSES)
        ack = await asyncio.wait_for(
            self.broker.modify_order(order.broker_order_id, price=new_price), timeout=self.call_timeout_s
        )
        from django.db.models import F

        await _db(Order.objects.filter(pk=order.pk, requote_count=order.requote_count).update)(
            limit_price=new_price,
            requote_count=F("requote_count") + 1,
            modification_count=F("modification_count") + 1,
        )
        if ack.filled_quantity:
            await self._sync_one(order.pk)
        return await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)

    async def reprice(self, order: Order, new_price: Decimal) -> Order:
        """Move a resting exit toward the touch: only the modification cap applies
        (an exit is never abandoned for chasing too far)."""
        try:
            self.limiter.check_modification(order.modification_count)
        except ModificationCapExceeded as exc:
            raise OrderRefused(str(exc)) from None
        await self.limiter.acquire(priority=True)
        await asyncio.wait_for(
            self.broker.modify_order(order.broker_order_id, price=new_price), timeout=self.call_timeout_s
        )
        from django.db.models import F

        await _db(Order.objects.filter(pk=order.pk).update)(
            limit_price=new_price, modification_count=F("modification_count") + 1
        )
        return await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)

    # --- synchronising with the broker --------------------------------------------------

    async def sync(self, live: list[Order] | None = None) -> list[FillEvent | OrderUpdate]:
        """Pull order and trade updates from the broker; apply fills; enforce
        the partial-fill rule; resolve UNKNOWN orders. Returns strategy events.

        ``live``: what ``live_orders()`` returned just now, when the caller read
        it together with other things in one trip to the database thread.
        """
        if live is None:
            live = await _db(self.live_orders)()
        if not live:
            return self._drain()
        book = {o.correlation_id: o for o in await self.broker.order_book()}
        trades = defaultdict(list)
        for trade in await self.broker.trade_book():
            trades[trade.correlation_id].append(trade)
        events = self._events  # fills recorded here land in the same queue
        limits = await _db(self.limits)()
        now = self.clock.now()
        for order in live:
            remote = book.get(order.client_order_id)
            if remote is None:
                if (
                    order.state == S.UNKNOWN
                    and order.unknown_at
                    and (now - order.unknown_at).total_seconds() >= self.unknown_resolve_s
                ):
                    await _db(self._transition)(
                        order.pk,
                        {S.UNKNOWN},
                        S.REJECTED,
                        reject_code="NOT_AT_BROKER",
                        reason="the broker has no order with this correlation id",
                    )
                    events.append(self._update(order, S.REJECTED, "not at broker"))
                continue
            await _db(self._record_trades)(order.pk, trades.get(order.client_order_id, []))
            state = FROM_BROKER[remote.status]
            fields = {"broker_order_id": remote.broker_order_id}
            if order.acked_at is None:
                fields["acked_at"] = now
            if state == S.REJECTED:
                fields.update(reject_code=remote.reject_code[:40], reason=remote.reason)
            if state != order.state or order.state == S.UNKNOWN:
                await _db(self._transition)(order.pk, {order.state}, state, **fields)
                if state in (S.CANCELLED, S.REJECTED):
                    fresh = await _db(Order.objects.get)(pk=order.pk)
                    events.append(self._update(fresh, state, fresh.reason))
            elif state in (S.OPEN, S.PARTIAL):
                events.extend(await self._partial_fill_rule(order, limits, now))
        return self._drain()

    def live_orders(self) -> list[Order]:
        """Orders the broker may still change: OPEN, PARTIAL, UNKNOWN (sync; call through the database thread)."""
        # Called every second, and most seconds nothing is live: a one-column
        # query first, the joined rows only when there is something to sync.
        live = Order.objects.filter(account=self.account, state__in=[S.OPEN, S.PARTIAL, S.UNKNOWN])
        if self._any_live is None:
            self._any_live = Prepared(live.values_list("pk")[:1])
        if not self._any_live.exists():
            return []
        return list(live.select_related("instrument", "strategy", "signal"))

    def _drain(self) -> list[FillEvent | OrderUpdate]:
        events, self._events = self._events, []
        return events

    async def _partial_fill_rule(self, order: Order, limits: RiskLimits, now: dt.datetime) -> list:
        fresh = await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)
        if fresh.state not in (S.OPEN, S.PARTIAL) or fresh.acked_at is None:
            return []
        waited_ms = (now - fresh.acked_at).total_seconds() * 1000
        filled_pct = Decimal(fresh.filled_quantity * 100) / fresh.quantity
        if waited_ms < limits.partial_fill_wait_ms or filled_pct >= limits.partial_fill_min_pct:
            return []
        if fresh.purpose in EXIT_PURPOSES:
            return []  # exits are re-priced, never abandoned
        cancelled = await self.cancel(
            fresh, reason=f"{filled_pct:.0f}% filled after {limits.partial_fill_wait_ms} ms: remainder cancelled"
        )
        if cancelled.state == S.CANCELLED:
            return [self._update(cancelled, S.CANCELLED, cancelled.reason)]
        return []

    async def _sync_one(self, order_id: int) -> None:
        order = await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order_id)
        remote = await self.broker.get_order_by_correlation(order.client_order_id)
        if remote is None:
            return
        await self._apply_trades(order_id)
        state = FROM_BROKER[remote.status]
        if state != order.state:
            await _db(self._transition)(order_id, {order.state}, state, broker_order_id=remote.broker_order_id)

    async def _apply_trades(self, order_id: int) -> list:
        order = await _db(Order.objects.get)(pk=order_id)
        trades = [t for t in await self.broker.trade_book() if t.correlation_id == order.client_order_id]
        return await _db(self._record_trades)(order_id, trades)

    def _record_trades(self, order_id: int, trades) -> list[FillEvent]:
        from trading.orders.accounting import apply_fill

        known = set(Fill.objects.filter(order_id=order_id).values_list("broker_trade_id", flat=True))
        events = []
        for trade in sorted(trades, key=lambda t: (t.traded_at, t.trade_id)):
            if trade.trade_id in known:
                continue
            with transaction.atomic():
                order = (
                    Order.objects.select_for_update(of=("self",))
                    .select_related("instrument", "strategy", "signal")
                    .get(pk=order_id)
                )
                fill, position, closed = apply_fill(
                    order, trade_id=trade.trade_id, quantity=trade.quantity, price=trade.price, at=trade.traded_at
                )
                if fill is None:
                    continue
                filled = order.filled_quantity + trade.quantity
                average = (
                    (order.average_price or Decimal("0")) * order.filled_quantity + trade.price * trade.quantity
                ) / filled
                Order.objects.filter(pk=order_id, filled_quantity=order.filled_quantity).update(
                    filled_quantity=filled,
                    average_price=average.quantize(Decimal("0.01")),
                    first_fill_at=order.first_fill_at or trade.traded_at,
                )
                audit_append(
                    "order.fill",
                    actor="oms",
                    subject=f"order:{order.client_order_id}",
                    payload={
                        "trade_id": trade.trade_id,
                        "quantity": trade.quantity,
                        "price": trade.price,
                        "filled": filled,
                    },
                    at=trade.traded_at,
                )
                publish_on_commit(
                    "fill",
                    {"order": order_id, "quantity": trade.quantity, "price": str(trade.price)},
                    account=self.account,
                )
                publish_on_commit("position", {"instrument": order.instrument.security_id}, account=self.account)
            event = FillEvent(
                strategy_key=order.strategy.key if order.strategy_id else "",
                signal_key=order.signal.key if order.signal_id else None,
                security_id=order.instrument.security_id,
                side=order.side,
                quantity=trade.quantity,
                price=trade.price,
                filled_at=trade.traded_at,
                purpose=order.purpose,
                order_complete=filled >= order.quantity,
            )
            events.append(event)
            self._events.append(event)
        return events

    @staticmethod
    def _update(order: Order, state: str, reason: str) -> OrderUpdate:
        return OrderUpdate(
            strategy_key=order.strategy.key if order.strategy_id else "",
            signal_key=order.signal.key if order.signal_id else None,
            security_id=order.instrument.security_id,
            purpose=order.purpose,
            state=state,
            filled_quantity=order.filled_quantity,
            quantity=order.quantity,
            reason=reason,
        )

    # --- restart ------------------------------------------------------------------------

    async def recover(self) -> dict[str, int]:
        """After a restart: nothing may stay NEW or SUBMITTING, and nothing is resent.

        NEW rows were never sent (SUBMITTING comes first), so they are cancelled
        as stale intents; strategies re-issue what they still want. SUBMITTING
        and UNKNOWN rows are looked up by correlation id and take the broker's
        state, or are rejected when the broker has no such order.
        """
        counts = {"cancelled_new": 0, "resolved": 0, "not_at_broker": 0, "unresolved": 0}
        stale = await _db(lambda: list(Order.objects.filter(account=self.account, state=S.NEW)))()
        for order in stale:
            if await _db(self._transition)(
                order.pk, {S.NEW}, S.CANCELLED, reason="intent not sent before the engine stopped"
            ):
                counts["cancelled_new"] += 1
        pending = await _db(
            lambda: list(
                Order.objects.filter(account=self.account, state__in=[S.SUBMITTING, S.UNKNOWN]).select_related(
                    "instrument"
                )
            )
        )()
        for order in pending:
            if order.state == S.SUBMITTING:
                await _db(self._transition)(
                    order.pk, {S.SUBMITTING}, S.UNKNOWN, reason="in flight when the engine stopped"
                )
            try:
                found = await asyncio.wait_for(
                    self.broker.get_order_by_correlation(order.client_order_id), timeout=self.call_timeout_s
                )
            except (Unknown, Unavailable, TimeoutError, ConnectionError, Throttled):
                counts["unresolved"] += 1
                continue
            if found is None:
                await _db(self._transition)(
                    order.pk,
                    {S.UNKNOWN},
                    S.REJECTED,
                    reject_code="NOT_AT_BROKER",
                    reason="not at the broker after restart",
                )
                counts["not_at_broker"] += 1
            else:
                await self._apply_ack(order, found)
                counts["resolved"] += 1
        await self.sync()
        return counts

    # --- push updates ---------------------------------------------------------------------

    async def apply_broker_update(self, remote: BrokerOrder, trades: list | None = None) -> bool:
        """Apply one pushed order update (and the trades it brought), as ``sync`` applies what it polls.

        The order is found by correlation id (our client order id). Fills are
        recorded first, deduplicated by broker trade id (the REST safety net
        records the same ids, so a fill counts once whichever path sees it
        first); then the state follows the broker's with the same conditional
        update. A TRADED update whose fills are not all in yet moves the order
        to PARTIAL, so it stays live and the next sync records the rest. An
        older update arriving late (OPEN after PARTIAL) is refused by the state
        machine. Events for the strategies land in the queue ``sync`` hands
        over. One trip to the database thread. Returns False for an order that
        is not ours.
        """
        return await _db(self._apply_pushed)(remote, list(trades or ()))

    def _apply_pushed(self, remote: BrokerOrder, trades: list) -> bool:
        order = self._find_pushed(remote)
        if order is None:
            return False
        if trades:
            self._record_trades(order.pk, trades)
        fresh = Order.objects.select_related("instrument", "strategy", "signal").get(pk=order.pk)
        state = FROM_BROKER[remote.status]
        if state == S.FILLED and fresh.filled_quantity < fresh.quantity:
            state = S.PARTIAL
        fields = {"broker_order_id": remote.broker_order_id or fresh.broker_order_id}
        if fresh.acked_at is None:
            fields["acked_at"] = self.clock.now()
        if state == S.REJECTED:
            fields.update(reject_code=remote.reject_code[:40], reason=remote.reason)
        moved = (state != fresh.state or fresh.state == S.UNKNOWN) and self._transition(
            order.pk, {fresh.state}, state, **fields
        )
        if moved and state in (S.CANCELLED, S.REJECTED):
            done = Order.objects.select_related("instrument", "strategy", "signal").get(pk=order.pk)
            self._events.append(self._update(done, state, done.reason))
        return True

    def _find_pushed(self, remote: BrokerOrder) -> Order | None:
        orders = Order.objects.filter(account=self.account)
        if remote.correlation_id:
            found = orders.filter(client_order_id=remote.correlation_id).first()
            if found is not None:
                return found
        if remote.broker_order_id:
            return orders.filter(broker_order_id=remote.broker_order_id).first()
        return None
