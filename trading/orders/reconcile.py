"""Reconciliation: the broker's orders and positions against ours.

Run when the engine starts (it stays HALTED until everything agrees) and
every few seconds while it runs. A missing, extra or different item becomes
a ``ReconciliationBreak`` holding both sides; while any break is open the
account is HALTED. A risk manager resolves a break in the admin: adopt an
external order (audited), or mark it fixed with a reason. A missing
position report is never read as "flat".
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone

from audit.chain import append as audit_append
from marketdata.models import Instrument
from quanthub import metrics
from risk.models import TradingState
from risk.services import set_trading_state
from trading.brokers.base import Broker, BrokerOrder, Unavailable
from trading.models import Order, Position, ReconciliationBreak
from trading.orders.manager import FROM_BROKER

log = logging.getLogger(__name__)
K = ReconciliationBreak.Kind
RECONCILE_ACTOR = "reconciliation"


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    breaks: list[ReconciliationBreak]
    halted: bool

    @property
    def clean(self) -> bool:
        return not self.breaks


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


async def reconcile(broker: Broker, *, account: str = "default") -> ReconcileResult:
    broker_orders = await broker.order_book()
    try:
        broker_positions = await broker.positions()
        position_report = True
    except Unavailable as exc:
        broker_positions, position_report = [], False
        log.warning("no position report from the broker", extra={"error": str(exc)})
    return await sync_to_async(_compare, thread_sensitive=True)(
        broker_orders, broker_positions, position_report, account
    )


def _compare(broker_orders, broker_positions, position_report: bool, account: str) -> ReconcileResult:
    found: list[tuple[str, str, dict, dict]] = []
    today = timezone.now() - timezone.timedelta(days=1)
    ours = {o.client_order_id: o for o in Order.objects.filter(account=account, created_at__gte=today)}
    theirs = {o.correlation_id: o for o in broker_orders if o.correlation_id}
    for cid, remote in theirs.items():
        order = ours.get(cid)
        if order is None:
            found.append((K.EXTRA_AT_BROKER, cid, {}, _order_side(remote)))
            continue
        expected = FROM_BROKER[remote.status]
        if order.state in (Order.State.NEW, Order.State.SUBMITTING, Order.State.UNKNOWN):
            continue  # in flight: the OMS resolves it by lookup
        if order.filled_quantity != remote.filled_quantity or (
            order.state != expected and not (order.state == Order.State.CANCELLED and expected == Order.State.CANCELLED)
        ):
            found.append(
                (
                    K.ORDER_MISMATCH,
                    cid,
                    {"state": order.state, "filled": order.filled_quantity, "quantity": order.quantity},
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
    return _record(found, account)


def _record(found, account: str) -> ReconcileResult:
    with transaction.atomic():
        keys = {(kind, key) for kind, key, _, _ in found}
        open_breaks = {
            (b.kind, b.key): b
            for b in ReconciliationBreak.objects.select_for_update().filter(account=account, resolved_at__isnull=True)
        }
        # Breaks that no longer show were cleared by the broker catching up.
        for (kind, key), item in open_breaks.items():
            if (kind, key) not in keys and kind != K.EXTRA_AT_BROKER:
                ReconciliationBreak.objects.filter(pk=item.pk, resolved_at__isnull=True).update(
                    resolved_at=timezone.now(), resolved_by=RECONCILE_ACTOR, resolution="agrees again"
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
                    actor=RECONCILE_ACTOR,
                    subject=f"{kind}:{key}",
                    payload={"ours": ours, "broker": broker_side},
                )
                log.warning("reconciliation break", extra={"kind": kind, "key": key})
            breaks.append(existing)
        halted = False
        if breaks:
            halted = (
                set_trading_state(
                    TradingState.State.HALTED,
                    actor=RECONCILE_ACTOR,
                    reason=f"reconciliation: {len(breaks)} open break(s)",
                    account=account,
                )
                or True
            )
    metrics.reconciled(len(breaks))
    return ReconcileResult(breaks, halted)


def adopt_external_order(item: ReconciliationBreak, *, actor: str) -> Order:
    """Take an order placed outside Quant Hub into our books (audited)."""
    if item.kind != K.EXTRA_AT_BROKER or item.resolved_at:
        raise ValueError("Only an open 'at broker, not ours' break can be adopted")
    data = item.broker
    instrument = Instrument.objects.get(security_id=data["security_id"])
    with transaction.atomic():
        order = Order.objects.create(
            account=item.account,
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
            resolved_at=timezone.now(), resolved_by=actor, resolution=f"adopted as order {order.client_order_id}"
        )
        audit_append("reconciliation.adopted", actor=actor, subject=f"order:{order.client_order_id}", payload=data)
    return order


def resolve_break(item: ReconciliationBreak, *, actor: str, resolution: str) -> None:
    if not resolution.strip():
        raise ValueError("Say how the break was resolved")
    with transaction.atomic():
        updated = ReconciliationBreak.objects.filter(pk=item.pk, resolved_at__isnull=True).update(
            resolved_at=timezone.now(), resolved_by=actor, resolution=resolution
        )
        if updated:
            audit_append(
                "reconciliation.resolved",
                actor=actor,
                subject=f"{item.kind}:{item.key}",
                payload={"resolution": resolution},
            )


def open_breaks(account: str = "default") -> int:
    return ReconciliationBreak.objects.filter(account=account, resolved_at__isnull=True).count()
