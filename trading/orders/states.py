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
from django.db.models import Q

from audit import actors
from audit.chain import append as audit_append
from marketdata.models import Instrument
from quanthub import metrics
from quanthub.sql import Statement, Update
from trading.brokers.base import BrokerOrder, BrokerStatus
from trading.checkpoints import checkpoint
from trading.events import publish_on_commit
from trading.models import Fill, Order, Signal, Strategy
from trading.orders.accounting import apply_fill
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
        if trades:
            # One locked read serves the fills and the state change: the fills keep the
            # order's filled quantity and average up to date on the row as they write them.
            order = _locked_for_fills(order_id)
            events = _record_locked(order, trades, account=account)
        else:
            # Only what the state change reads: a whole order row costs more to load than the rest of this.
            order = Order.objects.select_for_update(of=("self",)).only(*_SETTLE_FIELDS).get(pk=order_id)
            events = []
        checkpoint("oms.settle_between_fills_and_state")  # a crash here rolls both back
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
    updated = _state_update(tuple(fields)).run((new, *fields.values()), (order.pk, order.state))
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


# A state change with the stamps and fields it writes: compiled once for each set of
# fields (a handful: the stamp of the new state, an acknowledgement's, a reject's).
_STATE_UPDATES: dict[tuple[str, ...], Update] = {}


def _state_update(fields: tuple[str, ...]) -> Update:
    update = _STATE_UPDATES.get(fields)
    if update is None:
        update = _STATE_UPDATES[fields] = Update(Order, ("state", *fields), where={"pk": int, "state": str})
    return update


# A fill's change to its order, conditional on the filled quantity it was read with.
_FILLED = Update(
    Order, ("filled_quantity", "average_price", "first_fill_at"), where={"pk": int, "filled_quantity": int}
)

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


# What recording fills reads of the order, besides _SETTLE_FIELDS: its own columns
# (in the model's field order, as Model.from_db takes them), and of its related rows
# only the instrument's kind (charges) and security id (events) and the strategy's
# and the signal's keys (events). The rest of those rows (JSON parameters, state and
# features) is never needed here and costs more to decode than the fill to write.
_FILL_FIELDS = tuple(
    f.attname
    for f in Order._meta.concrete_fields
    if f.attname
    in {
        *_SETTLE_FIELDS,
        "account",
        "side",
        "purpose",
        "quantity",
        "average_price",
        "first_fill_at",
        "instrument_id",
        "strategy_id",
        "signal_id",
    }
)
# Compiled once: building and compiling this query cost more than everything else a fill reads.
_ORDER_FOR_FILLS = Statement(
    lambda pk: (
        Order.objects.select_for_update(of=("self",))
        .filter(pk=pk)
        .values_list(*_FILL_FIELDS, "instrument__kind", "instrument__security_id", "strategy__key", "signal__key")
    ),
    int,
)


def _locked_for_fills(order_id: int) -> Order:
    """The order, locked, with what recording its fills reads (inside the caller's transaction).

    The same instance ``select_related(...).only(...)`` would give: the order's
    fields above, its instrument, strategy and signal with the fields named
    there (any other field is read from the database if something asks)."""
    rows = _ORDER_FOR_FILLS.rows(order_id)
    if not rows:
        raise Order.DoesNotExist("Order matching query does not exist.")
    *own, kind, security_id, strategy_key, signal_key = rows[0]
    using = _ORDER_FOR_FILLS.using
    order = Order.from_db(using, _FILL_FIELDS, own)
    # The relations' setters keep the ids just read and cache the rows, as select_related does.
    order.instrument = Instrument.from_db(
        using, ("id", "kind", "security_id"), (order.instrument_id, kind, security_id)
    )
    order.strategy = (
        Strategy.from_db(using, ("id", "key"), (order.strategy_id, strategy_key)) if order.strategy_id else None
    )
    order.signal = Signal.from_db(using, ("id", "key"), (order.signal_id, signal_key)) if order.signal_id else None
    return order


# The stored fills of an order, or of any of n trade ids: compiled once for each n
# (an update brings one trade, sometimes a few).
_STORED_FILLS: dict[int, Statement] = {}


def _stored_fills(n: int) -> Statement:
    statement = _STORED_FILLS.get(n)
    if statement is None:
        statement = _STORED_FILLS[n] = Statement(
            lambda order_id, *trade_ids: (
                Fill.objects.filter(Q(order_id=order_id) | Q(broker_trade_id__in=trade_ids))
                .order_by()
                .values_list("broker_trade_id", "order_id")
            ),
            int,
            *[str] * n,
        )
    return statement


def record_trades(order_id: int, trades, *, account: str) -> list[FillEvent]:
    """Store the broker trades of one order that are not stored yet (sync, atomic)."""
    if not trades:
        return []  # most updates carry none: no need to read the order or its stored trade ids
    with transaction.atomic():
        return _record_locked(_locked_for_fills(order_id), trades, account=account)


def _record_locked(order: Order, trades, *, account: str) -> list[FillEvent]:
    """``record_trades`` on an order the caller has locked (``_locked_for_fills``) in its
    transaction. The order's filled quantity, average and first fill time are kept as
    written, so the caller reads the row as the database now holds it."""
    order_id = order.pk
    # Read after the lock, so a fill another writer committed first is seen: the order's
    # stored trade ids (and whether it has any fills: brokerage is charged on the first)
    # and any of these trade ids stored under another order, in one query.
    trade_ids = [t.trade_id for t in trades]
    known, has_fills = set(), False
    for trade_id, owner in _stored_fills(len(trade_ids)).rows(order_id, *trade_ids):
        known.add(trade_id)
        has_fills = has_fills or owner == order_id
    events = []
    for trade in sorted(trades, key=lambda t: (t.traded_at, t.trade_id)):
        if trade.trade_id in known:
            continue
        apply_fill(
            order,
            trade_id=trade.trade_id,
            quantity=trade.quantity,
            price=trade.price,
            at=trade.traded_at,
            first_fill=not has_fills,
        )
        known.add(trade.trade_id)
        has_fills = True
        filled = order.filled_quantity + trade.quantity
        average = (
            (order.average_price or Decimal("0")) * order.filled_quantity + trade.price * trade.quantity
        ) / filled
        average = average.quantize(Decimal("0.01"))
        first_fill_at = order.first_fill_at or trade.traded_at
        _FILLED.run((filled, average, first_fill_at), (order_id, order.filled_quantity))
        order.filled_quantity, order.average_price, order.first_fill_at = filled, average, first_fill_at
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
