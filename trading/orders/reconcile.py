"""Reconciliation: the broker's orders, trades and positions against ours.

Run when the engine starts and every few seconds while it runs. First broker
truth repairs what it explains, idempotently and with an audit record: an
order of ours whose fills, filled quantity or state differ from the broker's
order and trade books is brought to them (its missing fills recorded, each
broker trade once), and an order of ours that turned up late (an UNKNOWN, or
one called not-at-broker) is adopted with its fills. What is left — an order
or position we never sent, a quantity no fill accounts for, an order of ours
the broker does not have — becomes a ``ReconciliationBreak`` holding both
sides, and the account is HALTED for new exposure while any is open. When
every break has cleared the trading state says so; a risk manager resumes
(the admin's trading-state action), or ``QUANTHUB_RECONCILE_AUTO_RESUME``
lets reconciliation resume by itself. A missing position report is never
read as "flat".
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, replace

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from audit import actors
from audit.chain import append as audit_append
from marketdata.models import Instrument
from quanthub import metrics
from risk.models import TradingState
from risk.services import set_trading_state
from trading import writes
from trading.brokers.base import Broker, BrokerOrder, BrokerTrade, Unavailable
from trading.models import Fill, Order, Position, ReconciliationBreak
from trading.orders.states import FROM_BROKER, settle
from trading.timeline import account_now

log = logging.getLogger(__name__)
K = ReconciliationBreak.Kind


CLEARED_REASON = "reconciliation: every break has cleared; a risk manager may resume trading"


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    breaks: list[ReconciliationBreak]
    halted: bool
    repaired: int = 0  # orders brought to the broker's truth in this run
    # Until when the same books give the same answer: the moment the oldest order compared
    # leaves the day's window (``_today``); None when no order of ours was compared.
    steady_until: dt.datetime | None = None

    @property
    def clean(self) -> bool:
        return not self.breaks


def inputs_version(broker: Broker) -> int | None:
    """How often this process has written what a reconciliation against ``broker`` reads
    (our orders, fills, positions and breaks, and the broker's books where they are tables
    of this database: ``Broker.book_tables``). None for a broker whose books are elsewhere."""
    # A wrapper that is not a Broker (one delegating every call) may change what the books say.
    tables = broker.book_tables if isinstance(broker, Broker) else None
    if not isinstance(tables, tuple) or not set(tables) <= set(writes.WATCHED):
        return None  # a table whose writes are not counted could change unseen
    return writes.generation((*writes.RECONCILED, *tables))


@dataclass(slots=True)
class LastClean:
    """The last reconciliation that found nothing and repaired nothing, and what it read.

    Run again on the same inputs it would find the same and write nothing: while nothing
    it reads has been written by this process since (``inputs_version``), no order has
    left the day's window, and for at most ``writes.RECHECK_S`` of wall time (another
    process's write is seen within it), it need not run. Live, reconciliation runs every
    30 s, so it always runs; a replay at full speed with the paper broker skips the
    repeats. A broker whose books are not in this database is always asked.
    """

    version: int | None = None
    wall: float = 0.0
    until: dt.datetime | None = None

    def holds(self, version: int | None, now: dt.datetime) -> bool:
        return (
            version is not None
            and version == self.version
            and time.monotonic() - self.wall < writes.RECHECK_S
            and (self.until is None or now < self.until)
        )

    def ran(self, version: int | None, result: ReconcileResult | None) -> None:
        """After a run: ``version`` is ``inputs_version`` taken before it read anything."""
        if version is None or result is None or not result.clean or result.repaired:
            self.version = None
            return
        self.version, self.wall, self.until = version, time.monotonic(), result.steady_until


def _order_side(o: BrokerOrder) -> dict:
    return {
        "broker_order_id": o.broker_order_id,
        "correlation_id": o.correlation_id,
        "security_id": o.security_id,
        "side": str(o.side),
        "quantity": o.quantity,
        "filled": o.filled_quantity,
        "status": str(o.status),
    }


async def reconcile(broker: Broker, *, clock, account: str = "default") -> ReconcileResult:
    """Broker errors on the order and trade books propagate (typed): the caller
    degrades and tries again. A missing position report is a break, never flat.

    ``clock``: the clock of the engine acting for the account (orders are stamped
    on it, so "today's orders" and every repair, break and audit record are on it too)."""
    broker_orders = await broker.order_book()
    broker_trades = await broker.trade_book()
    try:
        broker_positions = await broker.positions()
        position_report = True
    except Unavailable as exc:
        broker_positions, position_report = [], False
        log.warning("no position report from the broker", extra={"error": str(exc)})
    now = clock.now()
    repaired = await sync_to_async(repair, thread_sensitive=True)(broker_orders, broker_trades, account, now)
    result = await sync_to_async(_compare, thread_sensitive=True)(
        broker_orders, broker_positions, position_report, account, now
    )
    return replace(result, repaired=repaired)


def _today(account: str, now):
    # Orders are stamped on the engine's clock: "today" is on it too (the demo's simulated day).
    since = now - timezone.timedelta(days=1)
    return Order.objects.filter(account=account, created_at__gte=since)


def _today_fills(account: str, now):
    since = now - timezone.timedelta(days=1)
    return Fill.objects.filter(order__account=account, order__created_at__gte=since)


def _rows(queryset, *fields: str) -> list:
    """``fields`` of each row as attributes (a named tuple), without building models."""
    return list(queryset.values_list(*fields, named=True))


def repair(broker_orders: list[BrokerOrder], broker_trades: list[BrokerTrade], account: str, now) -> int:
    """Bring each of our orders to the broker's order and trade books where they
    explain the difference (sync). Returns how many orders changed.

    Never backwards: a row of ours that is further along than the broker's
    report (more filled, or done while the broker says it rests) is left for
    ``_compare`` to report, because broker truth does not explain it.
    """
    theirs = {o.correlation_id: o for o in broker_orders if o.correlation_id}
    trades: dict[str, list[BrokerTrade]] = defaultdict(list)
    for trade in broker_trades:
        trades[trade.correlation_id].append(trade)
    # The few fields compared, not whole rows: every reconciliation reads the day's orders.
    ours = {
        row.client_order_id: row
        for row in _rows(
            _today(account, now).filter(client_order_id__in=list(theirs)),
            "client_order_id",
            "pk",
            "state",
            "filled_quantity",
            "reject_code",
        )
    }
    stored = set(Fill.objects.filter(order__in=[o.pk for o in ours.values()]).values_list("broker_trade_id", flat=True))
    changed = 0
    for cid, order in ours.items():
        remote = theirs[cid]
        if order.state in (Order.State.NEW, Order.State.SUBMITTING):
            continue  # in flight: the order manager resolves it by lookup
        missing = [t for t in trades.get(cid, []) if t.trade_id not in stored]
        expected = FROM_BROKER[remote.status]
        if not missing and order.state == expected and order.filled_quantity == remote.filled_quantity:
            continue
        if order.filled_quantity > remote.filled_quantity:
            continue  # ours is ahead of the broker's report: not explained
        if order.state in (Order.State.FILLED, Order.State.CANCELLED) and remote.is_open:
            continue  # done here, resting there: not explained
        before = {"state": order.state, "filled": order.filled_quantity, "code": order.reject_code}
        _, moved = settle(order.pk, remote, missing, now=now, account=account, repair=True, actor=actors.component())
        if not moved:
            continue
        changed += 1
        after = Order.objects.get(pk=order.pk)
        audit_append(
            "reconciliation.repaired",
            actor=actors.component(),
            subject=f"order:{cid}",
            payload={
                "ours_before": before,
                "ours_after": {"state": after.state, "filled": after.filled_quantity},
                "broker": _order_side(remote),
                "fills_recorded": [t.trade_id for t in missing],
            },
            at=now,
        )
        log.warning(
            "reconciliation repaired an order from broker truth",
            extra={"client_order_id": cid, "before": before, "after": after.state, "fills": len(missing)},
        )
    return changed


def _compare(broker_orders, broker_positions, position_report: bool, account: str, now) -> ReconcileResult:
    found: list[tuple[str, str, dict, dict]] = []
    ours = {
        o.client_order_id: o
        for o in _rows(
            _today(account, now),
            "client_order_id",
            "pk",
            "state",
            "filled_quantity",
            "quantity",
            "broker_order_id",
            "created_at",
        )
    }
    oldest = min((o.created_at for o in ours.values()), default=None)
    theirs = {o.correlation_id: o for o in broker_orders if o.correlation_id}
    fills_by_order = dict(
        _today_fills(account, now).values("order_id").annotate(q=Sum("quantity")).values_list("order_id", "q")
    )
    for cid, remote in theirs.items():
        order = ours.get(cid)
        if order is None:
            found.append((K.EXTRA_AT_BROKER, cid, {}, _order_side(remote)))
            continue
        expected = FROM_BROKER[remote.status]
        if order.state in (Order.State.NEW, Order.State.SUBMITTING, Order.State.UNKNOWN):
            continue  # in flight: the OMS resolves it by lookup
        recorded = fills_by_order.get(order.pk, 0)
        if (
            order.filled_quantity != remote.filled_quantity
            or recorded != order.filled_quantity
            or order.state != expected
        ):
            found.append(
                (
                    K.ORDER_MISMATCH,
                    cid,
                    {
                        "state": order.state,
                        "filled": order.filled_quantity,
                        "fills_recorded": recorded,
                        "quantity": order.quantity,
                    },
                    _order_side(remote),
                )
            )
    for order in broker_orders:
        if not order.correlation_id:
            found.append((K.EXTRA_AT_BROKER, order.broker_order_id, {}, _order_side(order)))
    for cid, order in ours.items():
        if order.state in (Order.State.OPEN, Order.State.PARTIAL, Order.State.FILLED) and cid not in theirs:
            found.append(
                (
                    K.MISSING_AT_BROKER,
                    cid,
                    {"state": order.state, "filled": order.filled_quantity, "broker_order_id": order.broker_order_id},
                    {},
                )
            )

    if not position_report:
        found.append((K.NO_POSITION_REPORT, "positions", {}, {"error": "the broker returned no position report"}))
    else:
        our_net: dict[str, int] = defaultdict(int)
        rows = (
            Position.objects.filter(account=account).values("instrument__security_id").annotate(net=Sum("net_quantity"))
        )
        for row in rows:
            our_net[row["instrument__security_id"]] += row["net"]
        broker_net = {p.security_id: p.net_quantity for p in broker_positions}
        for security_id in set(our_net) | set(broker_net):
            mine, theirs_net = our_net.get(security_id, 0), broker_net.get(security_id, 0)
            if mine != theirs_net:
                found.append((K.POSITION_MISMATCH, security_id, {"net_quantity": mine}, {"net_quantity": theirs_net}))
    steady_until = None if oldest is None else oldest + dt.timedelta(days=1)
    return replace(_record(found, account, now), steady_until=steady_until)


def _record(found, account: str, now) -> ReconcileResult:
    with transaction.atomic():
        keys = {(kind, key) for kind, key, _, _ in found}
        open_breaks = {
            (b.kind, b.key): b
            for b in ReconciliationBreak.objects.select_for_update().filter(account=account, resolved_at__isnull=True)
        }
        # Breaks that no longer show were cleared by the broker catching up, or by a repair.
        cleared = 0
        for (kind, key), item in open_breaks.items():
            if (kind, key) not in keys and kind != K.EXTRA_AT_BROKER:
                cleared += ReconciliationBreak.objects.filter(pk=item.pk, resolved_at__isnull=True).update(
                    resolved_at=now, resolved_by=actors.component(), resolution="agrees again"
                )
                audit_append(
                    "reconciliation.cleared",
                    actor=actors.component(),
                    subject=f"{kind}:{key}",
                    payload={"ours": item.ours, "broker": item.broker},
                    at=now,
                )
        breaks = []
        for kind, key, ours, broker_side in found:
            existing = open_breaks.get((kind, key))
            if existing is None:
                existing = ReconciliationBreak.objects.create(
                    account=account, kind=kind, key=key, ours=ours, broker=broker_side
                )
                audit_append(
                    "reconciliation.break",
                    actor=actors.component(),
                    subject=f"{kind}:{key}",
                    payload={"ours": ours, "broker": broker_side},
                    at=now,
                )
                log.warning("reconciliation break", extra={"kind": kind, "key": key})
            breaks.append(existing)
        halted = False
        if breaks:
            halted = (
                set_trading_state(
                    TradingState.State.HALTED,
                    actor=actors.component(),
                    reason=f"reconciliation: {len(breaks)} open break(s)",
                    account=account,
                    at=now,
                )
                or True
            )
        elif cleared and not ReconciliationBreak.objects.filter(account=account, resolved_at__isnull=True).exists():
            _all_clear(account, now)
    metrics.reconciled(len(breaks))
    return ReconcileResult(breaks, halted)


def _all_clear(account: str, now) -> None:
    """Every break cleared: say so where the gate's state is shown, and resume when allowed."""
    from trading.alerts import raise_alert

    state = TradingState.objects.filter(account=account).first()
    # Reconciliation's HALT is known by its reason: the actor is the engine (audit.actors).
    if state is None or state.state != TradingState.State.HALTED or not state.reason.startswith("reconciliation:"):
        return  # halted by someone else (Kill All, the loss cap, a risk manager): theirs to lift
    if settings.QUANTHUB_RECONCILE_AUTO_RESUME:
        set_trading_state(
            TradingState.State.ACTIVE,
            actor=actors.component(),
            reason="reconciliation: every break has cleared (automatic resume allowed)",
            account=account,
            expected=TradingState.State.HALTED,
            at=now,
        )
        raise_alert("INFO", "reconciliation", "Reconciliation clean: trading resumed", account=account, at=now)
        return
    TradingState.objects.filter(pk=state.pk, state=TradingState.State.HALTED, reason=state.reason).update(
        reason=CLEARED_REASON
    )
    raise_alert(
        "WARNING",
        "reconciliation",
        "Reconciliation clean: a risk manager may resume trading",
        "Every break has cleared; the account stays HALTED until a risk manager resumes it.",
        account=account,
        at=now,
    )


def adopt_external_order(item: ReconciliationBreak, *, actor: str) -> Order:
    """Take an order placed outside Quant Hub into our books (audited)."""
    if item.kind != K.EXTRA_AT_BROKER or item.resolved_at:
        raise ValueError("Only an open 'at broker, not ours' break can be adopted")
    data = item.broker
    instrument = Instrument.objects.get(security_id=data["security_id"])
    at = account_now(item.account)
    with transaction.atomic():
        order = Order.objects.create(
            account=item.account,
            created_at=at,
            client_order_id=(data.get("correlation_id") or f"EXT{data['broker_order_id']}")[:25],
            broker_order_id=data["broker_order_id"],
            instrument=instrument,
            side=data["side"],
            quantity=data["quantity"],
            purpose=Order.Purpose.EXTERNAL,
            state=Order.State.OPEN,
            reason=f"adopted from the broker by {actor}",
        )
        ReconciliationBreak.objects.filter(pk=item.pk).update(
            resolved_at=at, resolved_by=actor, resolution=f"adopted as order {order.client_order_id}"
        )
        audit_append(
            "reconciliation.adopted", actor=actor, subject=f"order:{order.client_order_id}", payload=data, at=at
        )
    return order


def resolve_break(item: ReconciliationBreak, *, actor: str, resolution: str) -> None:
    if not resolution.strip():
        raise ValueError("Say how the break was resolved")
    at = account_now(item.account)
    with transaction.atomic():
        updated = ReconciliationBreak.objects.filter(pk=item.pk, resolved_at__isnull=True).update(
            resolved_at=at, resolved_by=actor, resolution=resolution
        )
        if updated:
            audit_append(
                "reconciliation.resolved",
                actor=actor,
                subject=f"{item.kind}:{item.key}",
                payload={"resolution": resolution},
                at=at,
            )


def open_breaks(account: str = "default") -> int:
    return ReconciliationBreak.objects.filter(account=account, resolved_at__isnull=True).count()
