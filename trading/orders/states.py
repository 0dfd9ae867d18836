"""The order's state machine, and bringing one order to the broker's truth.

``ALLOWED`` is every legal state change; ``FROM_BROKER`` maps the broker's
statuses onto ours. ``settle`` records an order's new broker trades and its
new state in one transaction — the acknowledgement, a sync, a repair — so a
crash can never leave an order done with its fills missing.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db import transaction

from audit import actors
from audit.chain import append as audit_append
from quanthub import metrics
from trading.brokers.base import BrokerOrder, BrokerStatus
from trading.checkpoints import checkpoint
from trading.events import publish_on_commit
from trading.models import Fill, Order
from trading.strategies.base import FillEvent

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


def _order_fields(order: Order, remote: BrokerOrder, target: str, now: dt.datetime) -> dict:
    fields: dict = {}
    if remote.broker_order_id and order.broker_order_id != remote.broker_order_id:
        fields["broker_order_id"] = remote.broker_order_id
    if order.acked_at is None:
        fields["acked_at"] = now
    if target == S.REJECTED:
        fields.update(reject_code=(remote.reject_code or "REJECTED")[:40], reason=remote.reason or order.reason)
    return fields


def settle(
    order_id: int,
    remote: BrokerOrder,
    trades,
    *,
    now: dt.datetime,
    account: str,
    repair: bool = False,
    actor: str | None = None,  # None: audit.actors.component()
) -> tuple[list[FillEvent], bool]:
    """Bring one order to the broker's truth in ONE transaction: every trade of it
    the broker lists that we have not stored (a broker trade is stored once: its
    id is unique), then its state. Sync; call through the database thread.

    A terminal broker status whose trades are not all listed yet leaves the order
    PARTIAL, so it stays live and the next sync records the rest; FILLED therefore
    always means every fill is on the books. ``repair``: reconciliation may also
    move a terminal row the broker contradicts (a rejected or unknown order that
    turned up at the broker after all), with an audit record naming both sides.
    Returns the fills recorded and whether anything changed.
    """
    with transaction.atomic():
        events = record_trades(order_id, trades, account=account)
        checkpoint("oms.settle_between_fills_and_state")  # a crash here rolls both back
        # Only what the state change reads: a whole order row costs more to load than the rest of this.
        order = Order.objects.select_for_update(of=("self",)).only(*_SETTLE_FIELDS).get(pk=order_id)
        target = FROM_BROKER[remote.status]
        if target in Order.TERMINAL_STATES and order.filled_quantity < remote.filled_quantity:
            target = S.PARTIAL  # the broker's trade book lags its order book: keep looking
        fields = _order_fields(order, remote, target, now)
        changed = bool(events)
        if target != order.state:
            if target in ALLOWED[order.state]:
                changed |= _transition_row(order, target, now, account, actor=actor, **fields)
            elif repair and order.state in Order.TERMINAL_STATES:
                stamp = STAMP.get(target)
                if stamp:
                    fields.setdefault(stamp, now)
                if Order.objects.filter(pk=order_id, state=order.state).update(state=target, **fields):
                    changed = True
                    audit_append(
                        "order.repaired",
                        actor=actor or actors.component(),
                        subject=f"order:{order.client_order_id}",
                        payload={
                            "ours": {"state": order.state, "filled": order.filled_quantity, "code": order.reject_code},
                            "broker": {
                                "status": str(remote.status),
                                "filled": remote.filled_quantity,
                                "broker_order_id": remote.broker_order_id,
                            },
                        },
                        at=now,
                    )
                    publish_on_commit("order", {"id": order_id, "state": target}, account=account)
                    metrics.order_state(target, fields.get("reject_code"))
        elif fields:
            Order.objects.filter(pk=order_id).update(**fields)
    return events, changed


def _transition_row(
    order: Order, new: str, now: dt.datetime, account: str, *, actor: str | None = None, **fields
) -> bool:
    """A conditional state change inside the caller's transaction, audited."""
    if new in STAMP:
        fields.setdefault(STAMP[new], now)
    updated = Order.objects.filter(pk=order.pk, state=order.state).update(state=new, **fields)
    if updated and new not in (S.SUBMITTING, S.OPEN, S.PARTIAL):
        # The row is locked (select_for_update) and read after its fills: it and the
        # fields just written are what the database holds, without reading it again.
        audit_append(
            f"order.{new.lower()}",
            actor=actor or actors.component(),
            subject=f"order:{order.client_order_id}",
            payload={
                "state": new,
                "filled": order.filled_quantity,
                "reason": fields.get("reason", order.reason),
                "code": fields.get("reject_code", order.reject_code),
                "broker_order_id": fields.get("broker_order_id", order.broker_order_id),
            },
            at=now,
        )
    if updated:
        publish_on_commit("order", {"id": order.pk, "state": new}, account=account)
        metrics.order_state(new, fields.get("reject_code"))
    return bool(updated)


# The order fields settle and _transition_row read.
_SETTLE_FIELDS = (
    "id",
    "state",
    "filled_quantity",
    "broker_order_id",
    "acked_at",
    "reason",
    "reject_code",
    "client_order_id",
)


def record_trades(order_id: int, trades, *, account: str) -> list[FillEvent]:
    """Store the broker trades of one order that are not stored yet (sync, atomic)."""
    from trading.orders.accounting import apply_fill

    if not trades:
        return []  # most updates carry none: no need to read the order's stored trade ids
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
                actor=actors.component(),
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
                "fill", {"order": order_id, "quantity": trade.quantity, "price": str(trade.price)}, account=account
            )
            publish_on_commit("position", {"instrument": order.instrument.security_id}, account=account)
        events.append(
            FillEvent(
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
        )
    return events
