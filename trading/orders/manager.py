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
import time
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import F

from audit import actors
from audit.chain import append as audit_append
from marketdata.ticks import price_on_tick
from quanthub import metrics
from quanthub.clock import Clock, RealClock
from quanthub.sql import Prepared
from quanthub.sql import on_db_thread as _db
from risk.models import RiskLimits
from risk.slippage import check_slippage
from trading.brokers.base import (
    AuthExpired,
    Broker,
    BrokerError,
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
from trading.models import Order
from trading.orders.claims import EXIT_PURPOSES, BrokerNet, claim_exit
from trading.orders.states import ALLOWED, FROM_BROKER, STAMP, record_trades, settle
from trading.strategies.base import FillEvent, OrderUpdate

log = logging.getLogger(__name__)
S = Order.State
# Orders the broker may still change.
LIVE_STATES = (S.OPEN, S.PARTIAL, S.UNKNOWN)


class OrderRefused(Exception):
    """The OMS refused to send (slippage, modification or requote cap); the reason is recorded."""


def default_client_order_id() -> str:
    # ≤ 25 characters of [A-Z0-9]: safe as Dhan's correlationId.
    return "QH" + secrets.token_hex(9).upper()


LOOKUP_FAILED = object()  # the broker could not be asked; not the same as "it has no such order"
NOT_AT_BROKER = "NOT_AT_BROKER"
PUSHED_IDS_KEPT = 20_000
PENDING_REASON = "not listed at the broker yet: looked up by correlation id until it shows or the grace window ends"


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
        not_found_grace_s: float | None = None,
        max_place_attempts: int = 3,
        max_retry_after_s: float = 30.0,
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
        self.exit_not_found_grace_s = float(settings.QUANTHUB_EXIT_NOT_FOUND_GRACE_S)
        self.not_found_grace_s = (
            float(settings.QUANTHUB_NOT_FOUND_GRACE_S) if not_found_grace_s is None else not_found_grace_s
        )
        self.max_place_attempts = max_place_attempts
        self.max_retry_after_s = max_retry_after_s
        self.limits = limits
        # Fill and order events for the strategies, whichever call recorded them
        # (a fill can arrive with the acknowledgement); sync() hands them over.
        self._events: list[FillEvent | OrderUpdate] = []
        self._any_live: Prepared | None = None
        # Client order id -> order id, for pushed updates (``_find_pushed``): only ids read
        # from committed rows, so a rolled-back order never lands here.
        self._pushed_ids: dict[str, int] = {}
        # Sends waiting out a throttle's Retry-After: tasks, so the engine loop goes on.
        self._retries: set[asyncio.Task] = set()
        self._auth_alerted = -1e9  # time.monotonic() of the last expired-token alert
        self.auth_alerts = 0

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
                    actor=actors.component(),
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
                metrics.order_state(new, fields.get("reject_code"))
        return bool(updated)

    def _create(self, claim: BrokerNet | None = None, **values) -> Order:
        now = self.clock.now()
        with transaction.atomic():
            if values.get("purpose") in EXIT_PURPOSES and values.get("state", S.NEW) == S.NEW:
                # One exit per position quantity, whoever sends it (raises ExitClaimed).
                claim_exit(
                    account=self.account,
                    instrument_id=values["instrument"].pk,
                    side=values["side"],
                    quantity=values["quantity"],
                    broker_net=claim,
                )
            order = Order.objects.create(account=self.account, created_at=now, committed_at=now, **values)
            audit_append(
                "order.intent",
                actor=actors.component(),
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
        claim: BrokerNet | None = None,
    ) -> Order:
        """Commit and send one order. An exit is claimed first (``trading.orders.claims``):
        one whose quantity another exit already covers raises ``ExitClaimed``, with
        nothing committed. ``claim``: judge it against the broker's position report."""
        priority = purpose in EXIT_PURPOSES if priority is None else priority
        if limit_price is not None:
            # The boundary: whatever priced it, a price leaves on the instrument's own tick.
            limit_price = price_on_tick(instrument, limit_price)
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
            verdict = check_slippage(
                side, quantity, self.book.get(instrument.security_id), limits, tick=instrument.tick_size
            )
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
        order = await _db(self._create)(claim, **values)
        checkpoint("oms.after_commit")
        return await self.send(order, priority=priority)

    async def send(self, order: Order, *, priority: bool = False) -> Order:
        """Send a committed NEW order (used by submit, and for slices).

        A throttled send is looked up by correlation id first (the broker may have
        taken it before it throttled the reply) and only then tried again, after
        the broker's Retry-After, from a task of its own: the caller (the engine
        loop) does not wait. Until then the order stays SUBMITTING; a restart in
        between finds it in flight and looks it up, it never resends it.
        """
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
        await self._attempt(order, request, priority, 1)
        return await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)

    async def _attempt(self, order: Order, request: PlaceRequest, priority: bool, attempt: int) -> None:
        await self.limiter.acquire(priority=priority)
        sent_at = self.clock.now()
        checkpoint("oms.before_broker_call")
        try:
            try:
                ack = await asyncio.wait_for(self.broker.place_order(request), timeout=self.call_timeout_s)
            finally:
                # Written once the call is out, not between the limiter's slot and the call:
                # a commit there would put a variable gap between the send the account's
                # window counted and the one the broker sees.
                await _db(Order.objects.filter(pk=order.pk).update)(sent_at=sent_at)
        except Throttled as exc:
            await self._after_refusal(order, request, priority, attempt, exc, delay=exc.retry_after)
            return
        except AuthExpired as exc:
            await self.on_auth_expired(exc, where=f"placing {order.client_order_id}")
            await self._after_refusal(order, request, priority, attempt, exc, delay=0.0)
            return
        except Rejected as exc:
            await _db(self._transition)(
                order.pk, {S.SUBMITTING}, S.REJECTED, reject_code=exc.code[:40], reason=exc.message
            )
            log.warning(
                "order rejected",
                extra={"client_order_id": order.client_order_id, "code": exc.code, "reason": exc.message},
            )
            return
        except Unavailable as exc:
            # Refused before the broker took it: nothing exists to look up.
            await _db(self._transition)(
                order.pk, {S.SUBMITTING}, S.REJECTED, reject_code="UNAVAILABLE", reason=str(exc)[:500]
            )
            return
        except (Unknown, TimeoutError, ConnectionError, BrokerError) as exc:
            await _db(self._transition)(order.pk, {S.SUBMITTING}, S.UNKNOWN, reason=f"outcome unknown: {exc!r}"[:500])
            log.warning("order outcome unknown", extra={"client_order_id": order.client_order_id})
            await self.resolve_unknown(order)
            return
        checkpoint("oms.after_ack")
        await self._apply_ack(order, ack)

    async def _after_refusal(self, order, request, priority: bool, attempt: int, exc: Exception, *, delay: float):
        """Throttled or token expired on a send: look it up, then (maybe) try again later."""
        found = await self._lookup(order.client_order_id)
        if found is LOOKUP_FAILED:
            # Cannot tell whether the broker has it: never resend blind. Pending,
            # looked up by correlation id at every sync and reconciliation.
            await _db(self._transition)(
                order.pk, {S.SUBMITTING}, S.UNKNOWN, reason=f"{type(exc).__name__} and the lookup failed"[:500]
            )
            return
        if found is not None:
            await self._apply_ack(order, found)
            return
        if attempt >= self.max_place_attempts or delay > self.max_retry_after_s:
            code = "THROTTLED" if isinstance(exc, Throttled) else "AUTH_EXPIRED"
            await _db(self._transition)(order.pk, {S.SUBMITTING}, S.REJECTED, reject_code=code, reason=str(exc)[:500])
            return
        log.info(
            "send retried after the broker's pause",
            extra={"client_order_id": order.client_order_id, "retry_after": delay, "attempt": attempt},
        )
        task = asyncio.create_task(self._retry(order, request, priority, attempt + 1, delay))
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(self, order, request, priority: bool, attempt: int, delay: float) -> None:
        try:
            await asyncio.sleep(max(delay, 0.0))
            # Looked up once more right before the resend: nothing is ever sent twice.
            found = await self._lookup(order.client_order_id)
            if found is LOOKUP_FAILED:
                await _db(self._transition)(
                    order.pk, {S.SUBMITTING}, S.UNKNOWN, reason="retry after a throttle: the lookup failed"
                )
                return
            if found is not None:
                await self._apply_ack(order, found)
                return
            fresh = await _db(Order.objects.get)(pk=order.pk)
            if fresh.state != S.SUBMITTING:
                return
            await self._attempt(order, request, priority, attempt)
        except asyncio.CancelledError:
            raise
        except Exception:  # the order stays SUBMITTING/UNKNOWN; recovery and reconciliation look it up
            log.warning("send retry failed", extra={"client_order_id": order.client_order_id}, exc_info=True)

    async def wait_for_retries(self) -> None:
        """Wait for sends pausing on a throttle (tests, and a clean shutdown)."""
        while self._retries:
            await asyncio.gather(*list(self._retries), return_exceptions=True)

    async def _lookup(self, correlation_id: str):
        """The broker's order for this correlation id, None if it has none, or LOOKUP_FAILED."""
        try:
            return await asyncio.wait_for(
                self.broker.get_order_by_correlation(correlation_id), timeout=self.call_timeout_s
            )
        except AuthExpired as exc:
            await self.on_auth_expired(exc, where=f"looking up {correlation_id}")
            return LOOKUP_FAILED
        except (BrokerError, TimeoutError, ConnectionError, ValueError, KeyError, TypeError) as exc:
            log.info("order lookup failed", extra={"correlation_id": correlation_id, "error": repr(exc)})
            return LOOKUP_FAILED

    async def on_auth_expired(self, exc: Exception, *, where: str) -> None:
        """The broker's token expired somewhere in the order path: a CRITICAL alert
        (once a minute, not once a call) and a renewal the running broker uses at once."""
        from trading.alerts import raise_alert

        wall = time.monotonic()
        if wall - self._auth_alerted >= 60.0:
            self._auth_alerted = wall
            self.auth_alerts += 1
            try:
                await _db(raise_alert)(
                    "CRITICAL",
                    "token",
                    "Broker token expired",
                    f"While {where}: {exc}. Renewing the session; orders are looked up before any resend.",
                    account=self.account,
                )
            except Exception:  # the database may be the next thing down; the log still says it
                log.critical("broker token expired", extra={"where": where})
        try:
            renewed = await asyncio.wait_for(self.broker.renew_session(), timeout=max(self.call_timeout_s, 10.0))
        except Exception as renew_exc:
            log.error("token renewal failed", extra={"error": repr(renew_exc)})
            return
        if renewed:
            log.warning("broker session renewed after an expired token", extra={"where": where})

    async def _apply_ack(self, order: Order, ack: BrokerOrder) -> None:
        """The acknowledgement's state and the fills it carries, in one transaction."""
        metrics.observe_ack(order.snapshot_at, self.clock.now())
        trades = []
        if ack.filled_quantity:
            trades = await self._trades_of(order.client_order_id)
        checkpoint("oms.before_settle")
        if ack.status == BrokerStatus.REJECTED and not ack.reason:
            # Dhan's 200 reply to a refused order can carry the status only: its code
            # and message are in the order book.
            found = await self._lookup(order.client_order_id)
            if found not in (None, LOOKUP_FAILED) and (found.reason or found.reject_code):
                ack = found
        events, _ = await _db(settle)(order.pk, ack, trades, now=self.clock.now(), account=self.account)
        self._events.extend(events)

    async def _trades_of(self, correlation_id: str) -> list:
        try:
            return [t for t in await self.broker.trade_book() if t.correlation_id == correlation_id]
        except AuthExpired as exc:
            await self.on_auth_expired(exc, where="reading the trade book")
            return []
        except (BrokerError, TimeoutError, ConnectionError) as exc:
            # The state waits for the trades (PARTIAL until they are listed): the next sync finds them.
            log.info("trade book unavailable", extra={"error": repr(exc)})
            return []

    async def resolve_unknown(self, order: Order) -> bool:
        """Look the order up by correlation id for up to ``unknown_resolve_s``.

        Not found by then is not final: the order stays UNKNOWN (pending) and
        every sync and reconciliation looks for it again, for the grace window.
        """
        # A way out looks only for its own short window: past it the order is given up
        # (NOT_AT_BROKER at the next sync) and the flatten sends the quantity again.
        window = (
            min(self.unknown_resolve_s, self.exit_not_found_grace_s)
            if order.purpose in EXIT_PURPOSES
            else self.unknown_resolve_s
        )
        deadline = asyncio.get_running_loop().time() + window
        delay = 0.05
        while True:
            found = await self._lookup(order.client_order_id)
            if found is not LOOKUP_FAILED and found is not None:
                await self._apply_ack(order, found)
                return True
            if asyncio.get_running_loop().time() >= deadline:
                if found is None:
                    await _db(Order.objects.filter(pk=order.pk, state=S.UNKNOWN).update)(reason=PENDING_REASON)
                    if order.purpose in EXIT_PURPOSES:
                        # Given up here and now when the exit window has run on the engine's
                        # clock too, so the flatten sends the quantity again without waiting
                        # for the next sync (a simulated clock that stood still leaves it pending).
                        fresh = await _db(Order.objects.get)(pk=order.pk)
                        await _db(self._expire_pending)(fresh, self.clock.now())
                return False
            # Never past the deadline: the last look is at the window's end, not up to half a second after.
            await asyncio.sleep(max(0.0, min(delay, deadline - asyncio.get_running_loop().time())))
            delay = min(delay * 2, 0.5)

    # --- cancel and requote -----------------------------------------------------------

    async def cancel(self, order: Order, *, reason: str = "cancelled") -> Order:
        if order.broker_order_id and order.state in (S.OPEN, S.PARTIAL):
            await self.limiter.acquire(priority=order.purpose in EXIT_PURPOSES)
            # The reason says why it was cancelled (not why it was sent): written before the
            # cancel so the CANCELLED transition's audit record carries it too.
            before = order.reason
            await _db(Order.objects.filter(pk=order.pk, state__in=[S.OPEN, S.PARTIAL]).update)(reason=reason)
            try:
                await asyncio.wait_for(self.broker.cancel_order(order.broker_order_id), timeout=self.call_timeout_s)
            except Rejected as exc:
                log.info(
                    "cancel refused by broker", extra={"client_order_id": order.client_order_id, "reason": exc.message}
                )
            await self._sync_one(order.pk)
            await _db(Order.objects.filter(pk=order.pk, reason=reason).exclude(state=S.CANCELLED).update)(reason=before)
        elif order.state == S.NEW:
            await _db(self._transition)(order.pk, {S.NEW}, S.CANCELLED, reason=reason)
        return await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)

    async def requote(self, order: Order, new_price: Decimal) -> Order:
        new_price = price_on_tick(order.instrument, new_price)
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
        ack = await self._modify(order, new_price)
        await _db(Order.objects.filter(pk=order.pk, requote_count=order.requote_count).update)(
            limit_price=new_price,
            requote_count=F("requote_count") + 1,
            modification_count=F("modification_count") + 1,
        )
        await self._after_modify(order, ack)
        return await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)

    async def reprice(self, order: Order, new_price: Decimal) -> Order:
        """Move a resting exit toward the touch: only the modification cap applies
        (an exit is never abandoned for chasing too far)."""
        new_price = price_on_tick(order.instrument, new_price)
        try:
            self.limiter.check_modification(order.modification_count)
        except ModificationCapExceeded as exc:
            raise OrderRefused(str(exc)) from None
        await self.limiter.acquire(priority=True)
        ack = await self._modify(order, new_price)
        await _db(Order.objects.filter(pk=order.pk).update)(
            limit_price=new_price, modification_count=F("modification_count") + 1
        )
        await self._after_modify(order, ack)
        return await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)

    async def _modify(self, order: Order, new_price: Decimal) -> BrokerOrder:
        try:
            return await asyncio.wait_for(
                self.broker.modify_order(order.broker_order_id, price=new_price), timeout=self.call_timeout_s
            )
        except Rejected:
            # Most often the order filled (or was cancelled) before the change reached
            # it: take the broker's truth, fills included, then report the refusal.
            await self._sync_one(order.pk)
            raise
        except AuthExpired as exc:
            await self.on_auth_expired(exc, where=f"modifying {order.client_order_id}")
            raise

    async def _after_modify(self, order: Order, ack: BrokerOrder) -> None:
        """A modification that filled in the same reply records that fill now, with its state."""
        if ack.filled_quantity or ack.status != BrokerStatus.PENDING:
            trades = await self._trades_of(order.client_order_id) if ack.filled_quantity else []
            events, _ = await _db(settle)(order.pk, ack, trades, now=self.clock.now(), account=self.account)
            self._events.extend(events)

    # --- synchronising with the broker --------------------------------------------------

    async def sync(self, live: list[Order] | None = None, *, drain: bool = True) -> list[FillEvent | OrderUpdate]:
        """Pull order and trade updates from the broker; apply fills; enforce
        the partial-fill rule; look for pending (UNKNOWN) orders. Returns strategy events.

        ``live``: what ``live_orders()`` returned just now, when the caller read
        it together with other things in one trip to the database thread.
        ``drain=False``: leave the events queued for the engine's own sync (a
        flatten working on the engine's order path must not swallow the fills
        the strategies have to hear).
        Broker errors propagate (typed): the engine degrades and tries again.
        """
        if live is None:
            live = await _db(self.live_orders)()
        if not live:
            return self._drain() if drain else list(self._events)
        try:
            book = {o.correlation_id: o for o in await self.broker.order_book()}
            trades = defaultdict(list)
            for trade in await self.broker.trade_book():
                trades[trade.correlation_id].append(trade)
        except AuthExpired as exc:
            await self.on_auth_expired(exc, where="reading the order book")
            raise
        events = self._events  # fills recorded here land in the same queue
        limits = await _db(self.limits)()
        now = self.clock.now()
        for order in live:
            remote = book.get(order.client_order_id)
            if remote is None:
                if order.state == S.UNKNOWN and await _db(self._expire_pending)(order, now):
                    events.append(self._update(order, S.REJECTED, "not at broker"))
                continue
            fills, _ = await _db(settle)(
                order.pk, remote, trades.get(order.client_order_id, []), now=now, account=self.account
            )
            events.extend(fills)
            state = FROM_BROKER[remote.status]
            if state != order.state and state in (S.CANCELLED, S.REJECTED):
                fresh = await _db(Order.objects.select_related("instrument", "strategy", "signal").get)(pk=order.pk)
                if fresh.state == state:
                    events.append(self._update(fresh, state, fresh.reason))
            if state in (S.OPEN, S.PARTIAL):
                # Also when this sync brought the fill that moved it to PARTIAL: the rule
                # applies at 1 s after the acknowledgement, whichever sync the fill came in.
                events.extend(await self._partial_fill_rule(order, limits, now))
        return self._drain() if drain else list(self._events)

    def _expire_pending(self, order: Order, now: dt.datetime) -> bool:
        """A pending order past its grace window becomes NOT_AT_BROKER (never resent;
        reconciliation still adopts it if it shows up). Sync."""
        since = order.unknown_at or order.sent_at or order.created_at
        # A way out cannot wait a minute: an exit or Kill All leg the broker has not listed
        # within the short exit window is given up, so the flatten re-sends it at the touch
        # (a late listing is still adopted by reconciliation, and the flatten works to the
        # broker's position, so an over-sell is closed too).
        grace = (
            min(self.not_found_grace_s, self.exit_not_found_grace_s)
            if order.purpose in EXIT_PURPOSES
            else (self.not_found_grace_s)
        )
        if since is None or (now - since).total_seconds() < grace:
            return False
        return self._transition(
            order.pk,
            {S.UNKNOWN},
            S.REJECTED,
            reject_code=NOT_AT_BROKER,
            reason=f"the broker has no order with this correlation id after {grace:g} s",
        )

    def live_orders(self) -> list[Order]:
        """Orders the broker may still change: OPEN, PARTIAL, UNKNOWN (sync; call through the database thread)."""
        # Called every second, and most seconds nothing is live: a one-column
        # query first, the joined rows only when there is something to sync.
        # Building the queryset costs more than the check: only when it is needed.
        if self._any_live is None:
            self._any_live = Prepared(self._live().values_list("pk")[:1])
        if not self._any_live.exists():
            return []
        return self.live_rows()

    def live_rows(self) -> list[Order]:
        """``live_orders`` without its first check, for a caller that already knows
        something is live (the engine's second asks with today's P&L, one statement)."""
        return list(self._live().select_related("instrument", "strategy", "signal"))

    def _live(self):
        return Order.objects.filter(account=self.account, state__in=LIVE_STATES)

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
        """One order to the broker's truth (after a cancel, a re-price or a modify)."""
        order = await _db(Order.objects.get)(pk=order_id)
        remote = await self._lookup(order.client_order_id)
        if remote is None or remote is LOOKUP_FAILED:
            return
        trades = await self._trades_of(order.client_order_id)
        events, _ = await _db(settle)(order_id, remote, trades, now=self.clock.now(), account=self.account)
        self._events.extend(events)

    def _record_trades(self, order_id: int, trades) -> list[FillEvent]:
        """Store the trades of one order not stored yet; the events reach the strategies at the next sync."""
        events = record_trades(order_id, trades, account=self.account)
        self._events.extend(events)
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
        state with their fills; one the broker does not list (yet) stays pending
        (UNKNOWN) for the grace window. Reconciliation, right after, repairs
        every other row the broker's books contradict.
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
        now = self.clock.now()
        for order in pending:
            if order.state == S.SUBMITTING:
                await _db(self._transition)(
                    order.pk, {S.SUBMITTING}, S.UNKNOWN, reason="in flight when the engine stopped"
                )
            found = await self._lookup(order.client_order_id)
            if found is LOOKUP_FAILED:
                counts["unresolved"] += 1
            elif found is None:
                fresh = await _db(Order.objects.get)(pk=order.pk)
                if await _db(self._expire_pending)(fresh, now):
                    counts["not_at_broker"] += 1
                else:
                    await _db(Order.objects.filter(pk=order.pk, state=S.UNKNOWN).update)(reason=PENDING_REASON)
                    counts["unresolved"] += 1
            else:
                await self._apply_ack(order, found)
                counts["resolved"] += 1
        await self.sync()
        return counts

    # --- push updates ---------------------------------------------------------------------

    async def apply_broker_update(self, remote: BrokerOrder, trades: list | None = None) -> bool:
        """Apply one pushed order update (and the trades it brought), as ``sync`` applies what it polls.

        The order is found by correlation id (our client order id). Its new
        fills — deduplicated by broker trade id (the REST safety net records
        the same ids, so a fill counts once whichever path sees it first) — and
        its state are settled in one transaction, as an acknowledgement is. A
        TRADED update whose fills are not all in yet moves the order to
        PARTIAL, so it stays live and the next sync records the rest. An older
        update arriving late (OPEN after PARTIAL) is refused by the state
        machine. Events for the strategies land in the queue ``sync`` hands
        over. One trip to the database thread. Returns False for an order that
        is not ours.
        """
        return await _db(self._apply_pushed)(remote, list(trades or ()))

    def _apply_pushed(self, remote: BrokerOrder, trades: list) -> bool:
        order_id = self._find_pushed(remote)
        if order_id is None:
            return False
        # The fills and the state in one transaction, as for an acknowledgement.
        events, changed = settle(order_id, remote, trades, now=self.clock.now(), account=self.account)
        self._events.extend(events)
        if changed and FROM_BROKER[remote.status] in (S.CANCELLED, S.REJECTED):
            done = Order.objects.select_related("instrument", "strategy", "signal").get(pk=order_id)
            if done.state in (S.CANCELLED, S.REJECTED):
                self._events.append(self._update(done, done.state, done.reason))
        return True

    def _find_pushed(self, remote: BrokerOrder) -> int | None:
        """Our order's id for a pushed update: by correlation id, else by the broker's order id."""
        if remote.correlation_id:
            # An order's client order id never changes, and every order gets a few
            # pushes (placed, traded): the id found for the first serves the rest.
            found = self._pushed_ids.get(remote.correlation_id)
            if found is not None:
                return found
        orders = Order.objects.filter(account=self.account)
        if remote.correlation_id:
            found = orders.filter(client_order_id=remote.correlation_id).values_list("pk", flat=True).first()
            if found is not None:
                if len(self._pushed_ids) >= PUSHED_IDS_KEPT:
                    self._pushed_ids.clear()  # a day's orders fit many times over: never reached in a session
                self._pushed_ids[remote.correlation_id] = found
                return found
        if remote.broker_order_id:
            return orders.filter(broker_order_id=remote.broker_order_id).values_list("pk", flat=True).first()
        return None
