"""Fills into positions and round-trip trades.

Called inside the transaction that records a fill, so a fill, its position
change and (when flat again) the closed trade commit together. Idempotent:
a fill whose broker trade id is already stored changes nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import closing
from decimal import Decimal
from typing import NamedTuple

from django.db import DatabaseError
from django.db.models import Q
from django.utils import timezone

from quanthub.sql import Statement, Update
from trading.models import Fill, Order, Position, Trade

log = logging.getLogger(__name__)

ZERO = Decimal("0")
CENT = Decimal("0.01")


def charges_for(order: Order, quantity: int, price: Decimal, first_fill: bool, at: dt.datetime) -> Decimal:
    """Charges on a fill, from the versioned rates in ``risk.charges`` when that
    module is installed; zero otherwise."""
    try:
        from risk.charges import charges_for_fill
    except ImportError:
        return ZERO
    return charges_for_fill(
        instrument_kind=order.instrument.kind,
        side=order.side,
        quantity=quantity,
        price=price,
        new_order=first_fill,
        on=at.date(),
    )


_positions_written = 0


def positions_written() -> int:
    """How many fills this process has applied to positions: a reader that saw the same
    count before and after knows no fill of this process moved a position in between."""
    return _positions_written


def apply_fill(
    order: Order,
    *,
    trade_id: str,
    quantity: int,
    price: Decimal,
    at: dt.datetime,
    first_fill: bool | None = None,
) -> tuple[Fill | None, Position | None, Trade | None]:
    """Record one fill (inside the caller's transaction). Returns (fill, position, closed trade).

    ``first_fill``: None looks up whether ``trade_id`` is stored already (then nothing
    changes) and whether the order has fills. A caller that has read both under the
    order's lock passes whether this is the order's first fill instead."""
    if first_fill is None:
        if Fill.objects.filter(broker_trade_id=trade_id).exists():
            return None, None, None
        first_fill = not order.fills.exists()
    charges = charges_for(order, quantity, price, first_fill, at).quantize(CENT)
    fill = Fill.objects.create(
        order=order, broker_trade_id=trade_id, quantity=quantity, price=price, filled_at=at, charges=charges
    )
    global _positions_written
    _positions_written += 1  # before the write: a rolled-back one only makes a reader read again
    position = _locked_position(order.account, order.strategy_id, order.instrument_id)
    if position is None:
        position, _ = Position.objects.select_for_update().get_or_create(
            account=order.account,
            strategy=order.strategy,
            instrument=order.instrument,
            defaults={"signal": order.signal},
        )
    # Found by these two: the order's loaded rows spare the round trip's reads of them.
    position.instrument, position.strategy = order.instrument, order.strategy
    signed = quantity if order.side == Order.Side.BUY else -quantity
    held = position.net_quantity
    realised = ZERO
    if held == 0:
        position.opened_at = at
        position.signal = order.signal or position.signal
        position.realised_pnl = ZERO
        position.charges = ZERO
    if held * signed < 0:
        closing = min(abs(signed), abs(held))
        realised = (price - position.average_price) * closing * (1 if held > 0 else -1)
        new_qty = held + signed
        if new_qty == 0:
            position.average_price = ZERO
        elif new_qty * held < 0:
            position.average_price = price
    else:
        new_qty = held + signed
        position.average_price = (position.average_price * abs(held) + price * abs(signed)) / abs(new_qty)
    position.average_price = position.average_price.quantize(Decimal("0.0001"))
    position.net_quantity = new_qty
    position.realised_pnl += realised.quantize(CENT)
    position.charges += charges
    # Marked at the fill's price at once: the last mark was of the old quantity and
    # average, and the day's P&L (what the loss cap reads) would count a partial exit's
    # realised rupees again in it until the next mark, or for good after a stop.
    mark_to_market(position, price)
    trade = _close_round_trip(position, order, at) if new_qty == 0 and held != 0 else None
    # The row is locked and was read whole above: writing only what a fill changes
    # leaves the database holding what a whole-row save would. updated_at is
    # stamped as save() stamps an auto_now field.
    position.updated_at = timezone.now()
    if not _POSITION_FILLED.run([getattr(position, f.attname) for f in _POSITION_FILLED.fields], (position.pk,)):
        raise DatabaseError("the position a fill moved was not updated")
    return fill, position, trade


# Compiled once: a position row is read at every fill. One of each for a strategy's
# position and for the unassigned one (strategy IS NULL is not a parameter).
_POSITION = Statement(
    lambda account, instrument_id: (
        Position.objects.select_for_update()
        .filter(account=account, strategy__isnull=True, instrument_id=instrument_id)
        .order_by()
    ),
    str,
    int,
)
_STRATEGY_POSITION = Statement(
    lambda account, strategy_id, instrument_id: (
        Position.objects.select_for_update()
        .filter(account=account, strategy_id=strategy_id, instrument_id=instrument_id)
        .order_by()
    ),
    str,
    int,
    int,
)


def _locked_position(account: str, strategy_id: int | None, instrument_id: int) -> Position | None:
    """The position a fill moves, locked (inside the caller's transaction); None when there is none yet."""
    if strategy_id is None:
        found = _POSITION.objects(account, instrument_id)
    else:
        found = _STRATEGY_POSITION.objects(account, strategy_id, instrument_id)
    if len(found) > 1:  # the unique constraints rule it out; get() would say the same
        raise Position.MultipleObjectsReturned("get() returned more than one Position")
    return found[0] if found else None


# The position fields a fill changes (updated_at: auto_now, stamped by apply_fill).
_POSITION_FILLED = Update(
    Position,
    (
        "net_quantity",
        "average_price",
        "last_price",
        "realised_pnl",
        "unrealised_pnl",
        "charges",
        "opened_at",
        "signal",
        "updated_at",
    ),
    where={"pk": int},
)


class TripFill(NamedTuple):
    """What a closed round trip's trade is made of, per fill."""

    quantity: int
    price: Decimal
    charges: Decimal
    filled_at: dt.datetime
    side: str


# Most round trips are a handful of fills (an entry, a scale, an exit in a few parts):
# the newest this many are read first, and the older ones only when these do not net
# to zero. Reading the whole history each time would cost a close more the longer
# the day's fills on the instrument grow.
TRIP_FIRST_LOOK = 16


def round_trip_fills(position: Position) -> list[TripFill]:
    """The fills of the round trip that has just closed ``position``, oldest first.

    Matched by quantity, not by time: walking back from the newest fill (by
    insertion order), the round trip is the shortest run of fills that nets to
    zero. Timestamps play no part, so fills stamped by different clocks (or a
    position opened on a simulated clock) can never leave a trade without its
    exit fills. Only the columns the trade is made of are read: each fill's
    whole order row would cost more than the rest of closing the trade.
    """
    if position.strategy_id is None:
        values, few, every = (position.account, position.instrument_id), _UNASSIGNED_FEW, _UNASSIGNED_FILLS
    else:
        values = (position.account, position.instrument_id, position.strategy_id)
        few, every = _STRATEGY_FEW, _STRATEGY_FILLS
    newest = few.rows(*values)
    trip, netted = _walk_back(newest)
    if netted or len(newest) < TRIP_FIRST_LOOK:
        return trip
    fills = every.iterate(*values, chunk_size=200)
    with closing(fills):  # the cursor closes at the break, not when the generator is collected
        trip, _ = _walk_back(fills)
    return trip


def _walk_back(rows) -> tuple[list[TripFill], bool]:
    """From the newest fill back, the shortest run that nets to zero (oldest first), and
    whether it did; all of ``rows`` when none does."""
    trip: list[TripFill] = []
    net = 0
    for row in rows:
        fill = TripFill(*row)
        net += fill.quantity if fill.side == Order.Side.BUY else -fill.quantity
        trip.append(fill)
        if net == 0:
            break
    trip.reverse()
    return trip, net == 0 and bool(trip)


def _trip_fills(account: str, instrument_id: int, strategy: Q):
    return (
        Fill.objects.filter(order__account=account, order__instrument_id=instrument_id)
        .filter(strategy)
        .order_by("-pk")
        .values_list("quantity", "price", "charges", "filled_at", "order__side")
    )


def _trip_reads(limit: int | None) -> tuple[Statement, Statement]:
    """Compiled once, newest fill first (the newest ``limit``, or all): one for the
    unassigned position, one for a strategy's."""

    def cut(queryset):
        return queryset[:limit] if limit else queryset

    unassigned = Statement(
        lambda account, instrument_id: cut(_trip_fills(account, instrument_id, Q(order__strategy__isnull=True))),
        str,
        int,
    )
    strategy = Statement(
        lambda account, instrument_id, strategy_id: cut(
            _trip_fills(account, instrument_id, Q(order__strategy_id=strategy_id))
        ),
        str,
        int,
        int,
    )
    return unassigned, strategy


_UNASSIGNED_FEW, _STRATEGY_FEW = _trip_reads(TRIP_FIRST_LOOK)
_UNASSIGNED_FILLS, _STRATEGY_FILLS = _trip_reads(None)


def _close_round_trip(position: Position, order: Order, at: dt.datetime) -> Trade:
    fills = round_trip_fills(position)
    buys = [f for f in fills if f.side == Order.Side.BUY]
    sells = [f for f in fills if f.side == Order.Side.SELL]
    buy_qty, sell_qty = sum(f.quantity for f in buys), sum(f.quantity for f in sells)
    buy_value = sum((f.quantity * f.price for f in buys), ZERO)
    sell_value = sum((f.quantity * f.price for f in sells), ZERO)
    long = not fills or fills[0].side == Order.Side.BUY
    quantity = buy_qty if long else sell_qty
    entry_value, exit_value = (buy_value, sell_value) if long else (sell_value, buy_value)
    gross = (sell_value - buy_value).quantize(CENT)
    charges = sum((f.charges for f in fills), ZERO).quantize(CENT)
    entry_price = (entry_value / quantity).quantize(CENT) if quantity else ZERO
    exit_price = (exit_value / quantity).quantize(CENT) if quantity else ZERO
    stop_distance = abs(entry_price - position.stop_price) if position.stop_price else ZERO
    return Trade.objects.create(
        account=position.account,
        strategy=position.strategy,
        signal=position.signal,
        instrument=position.instrument,
        direction=Trade.Direction.LONG if long else Trade.Direction.SHORT,
        quantity=quantity,
        entry_price=entry_price,
        exit_price=exit_price,
        opened_at=fills[0].filled_at if fills else position.opened_at,
        closed_at=at,
        gross_pnl=gross,
        charges=charges,
        net_pnl=gross - charges,
        exit_reason=order.reason[:40] if order.purpose in (Order.Purpose.EXIT, Order.Purpose.KILL) else "",
        risk_amount=(stop_distance * quantity).quantize(CENT),
    )


def mark_to_market(position: Position, last_price: Decimal) -> None:
    """Unrealised P&L at ``last_price`` (the caller saves)."""
    position.last_price = last_price
    position.unrealised_pnl = ((last_price - position.average_price) * position.net_quantity).quantize(CENT)
