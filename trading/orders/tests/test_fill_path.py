"""Recording fills: one locked read of the order serves its fills and its state."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import transaction

from marketdata.models import Instrument
from trading.brokers.base import BrokerOrder, BrokerStatus, BrokerTrade, OrderType, Side
from trading.conftest import T0
from trading.models import Fill, Order, Position, Strategy, Trade
from trading.orders.states import _FILL_FIELDS, _locked_for_fills, settle

pytestmark = pytest.mark.django_db
S = Order.State


def _order(option, strategy=None, **values) -> Order:
    values.setdefault("client_order_id", "QHTEST0000000001")
    values.setdefault("side", Order.Side.BUY)
    values.setdefault("quantity", option.lot_size * 2)
    values.setdefault("state", S.OPEN)
    return Order.objects.create(instrument=option, strategy=strategy, limit_price=Decimal("100.00"), **values)


def _remote(order: Order, status: BrokerStatus, filled: int) -> BrokerOrder:
    return BrokerOrder(
        broker_order_id=f"B{order.pk}",
        correlation_id=order.client_order_id,
        security_id=order.instrument.security_id,
        exchange_segment="NSE_FNO",
        side=Side(order.side),
        order_type=OrderType.LIMIT,
        quantity=order.quantity,
        price=order.limit_price,
        status=status,
        filled_quantity=filled,
    )


def _trade(order: Order, trade_id: str, quantity: int, price: str, seconds: int = 0) -> BrokerTrade:
    return BrokerTrade(
        trade_id=trade_id,
        broker_order_id=f"B{order.pk}",
        correlation_id=order.client_order_id,
        security_id=order.instrument.security_id,
        exchange_segment="NSE_FNO",
        side=Side(order.side),
        quantity=quantity,
        price=Decimal(price),
        traded_at=T0.replace(second=seconds),
    )


def test_the_order_read_for_its_fills_is_what_select_related_gives(option):
    strategy = Strategy.objects.create(key="fill_path", name="Fill path", params={"big": list(range(50))})
    order = _order(option, strategy, average_price=Decimal("100.05"), reason="why")
    with transaction.atomic():
        fast = _locked_for_fills(order.pk)
    slow = Order.objects.select_related("instrument", "strategy", "signal").get(pk=order.pk)
    assert {name: getattr(fast, name) for name in _FILL_FIELDS} == {name: getattr(slow, name) for name in _FILL_FIELDS}
    assert (fast.instrument.kind, fast.instrument.security_id) == (slow.instrument.kind, slow.instrument.security_id)
    assert fast.strategy.key == "fill_path" and fast.signal is None
    assert type(fast.average_price) is Decimal and str(fast.average_price) == "100.05"
    # Anything not read is still there, from the database, when something asks.
    assert fast.instrument.lot_size == option.lot_size and fast.strategy.params == {"big": list(range(50))}
    with pytest.raises(Order.DoesNotExist), transaction.atomic():
        _locked_for_fills(order.pk + 1000)


def test_an_update_with_several_trades_records_each_new_one_once(option):
    other = _order(option, client_order_id="QHTEST0000000002")
    order = _order(option)
    lot = option.lot_size
    # A trade id already stored under another order is never stored again.
    settle(
        other.pk,
        _remote(other, BrokerStatus.PART_TRADED, lot),
        [_trade(other, "T-1", lot, "100.00")],
        now=T0,
        account="default",
    )
    trades = [
        _trade(order, "T-3", lot, "100.10", seconds=2),
        _trade(order, "T-1", lot, "100.00", seconds=1),
        _trade(order, "T-2", lot, "100.00", seconds=1),
    ]
    events, changed = settle(order.pk, _remote(order, BrokerStatus.TRADED, 2 * lot), trades, now=T0, account="default")
    assert changed and [e.quantity for e in events] == [lot, lot]
    assert [e.order_complete for e in events] == [False, True]
    fills = list(Fill.objects.filter(order=order).order_by("pk"))
    assert [f.broker_trade_id for f in fills] == ["T-2", "T-3"]
    # Brokerage (₹20 and its GST) on the order's first fill only.
    assert fills[0].charges - fills[1].charges > Decimal("20")
    order.refresh_from_db()
    assert order.state == S.FILLED and order.filled_quantity == 2 * lot
    assert order.average_price == Decimal("100.05") and order.first_fill_at == T0.replace(second=1)
    # The same update again changes nothing.
    assert settle(order.pk, _remote(order, BrokerStatus.TRADED, 2 * lot), trades, now=T0, account="default") == (
        [],
        False,
    )
    assert Fill.objects.count() == 3
    position = Position.objects.get(instrument=option, strategy=None)
    assert position.net_quantity == 3 * lot
    assert position.average_price == ((Decimal("100.00") * 2 + Decimal("100.10")) / 3).quantize(Decimal("0.0001"))


def test_a_strategys_round_trip_closes_on_its_own_fills(option):
    strategy = Strategy.objects.create(key="fill_path", name="Fill path")
    lot = option.lot_size
    # The unassigned position's fills are not the strategy's.
    loose = _order(option, client_order_id="QHTEST0000000009", quantity=lot)
    settle(
        loose.pk,
        _remote(loose, BrokerStatus.TRADED, lot),
        [_trade(loose, "L-1", lot, "90.00")],
        now=T0,
        account="default",
    )
    buy = _order(option, strategy, client_order_id="QHTEST0000000003", quantity=lot)
    sell = _order(
        option,
        strategy,
        client_order_id="QHTEST0000000004",
        quantity=lot,
        side=Order.Side.SELL,
        purpose=Order.Purpose.EXIT,
        reason="target",
    )
    settle(
        buy.pk,
        _remote(buy, BrokerStatus.TRADED, lot),
        [_trade(buy, "S-1", lot, "100.00", 1)],
        now=T0,
        account="default",
    )
    settle(
        sell.pk,
        _remote(sell, BrokerStatus.TRADED, lot),
        [_trade(sell, "S-2", lot, "110.00", 5)],
        now=T0,
        account="default",
    )
    trade = Trade.objects.get()
    assert (trade.strategy, trade.instrument) == (strategy, Instrument.objects.get(pk=option.pk))
    assert (trade.quantity, trade.entry_price, trade.exit_price) == (lot, Decimal("100.00"), Decimal("110.00"))
    assert trade.gross_pnl == Decimal("10.00") * lot and trade.exit_reason == "target"
    assert trade.opened_at == T0.replace(second=1) and trade.closed_at == T0.replace(second=5)
    assert trade.charges == sum(
        Fill.objects.filter(order__strategy=strategy).values_list("charges", flat=True), Decimal("0")
    )
    position = Position.objects.get(instrument=option, strategy=strategy)
    assert position.net_quantity == 0 and position.realised_pnl == trade.gross_pnl
    assert Position.objects.get(instrument=option, strategy=None).net_quantity == lot


@pytest.mark.parametrize("entries", [2, 20])
def test_a_round_trip_closes_on_all_its_fills_however_many(option, entries):
    """A close walks back from the newest fill: a round trip of a few fills is read in one
    short look, a longer one than that look in full; an earlier round trip is never part of it."""
    from trading.orders.accounting import TRIP_FIRST_LOOK

    lot = option.lot_size
    ids = iter(range(100, 200))

    def filled(side: str, lots: int, price: str, second: int, purpose=Order.Purpose.ENTRY) -> None:
        n = next(ids)
        order = _order(option, client_order_id=f"QHTEST{n:010d}", quantity=lots * lot, side=side, purpose=purpose)
        remote = _remote(order, BrokerStatus.TRADED, lots * lot)
        settle(order.pk, remote, [_trade(order, f"R-{n}", lots * lot, price, second)], now=T0, account="default")

    # An earlier round trip at other prices.
    filled(Order.Side.BUY, 1, "50.00", 0)
    filled(Order.Side.SELL, 1, "55.00", 1, Order.Purpose.EXIT)
    for n in range(entries):
        filled(Order.Side.BUY, 1, str(100 + n), 2 + n)
    filled(Order.Side.SELL, entries, "130.00", 59, Order.Purpose.EXIT)
    assert (entries + 1 > TRIP_FIRST_LOOK) == (entries == 20)
    first, trade = Trade.objects.order_by("pk")
    assert (first.quantity, first.entry_price, first.exit_price) == (lot, Decimal("50.00"), Decimal("55.00"))
    average = sum(Decimal(100 + n) for n in range(entries)) / entries
    assert trade.quantity == entries * lot and trade.entry_price == average.quantize(Decimal("0.01"))
    assert trade.exit_price == Decimal("130.00") and trade.opened_at == T0.replace(second=2)
    assert trade.gross_pnl == sum((Decimal("130.00") - (100 + n)) * lot for n in range(entries))
    trip_charges = Fill.objects.exclude(broker_trade_id__in=["R-100", "R-101"]).values_list("charges", flat=True)
    assert trade.charges == sum(trip_charges, Decimal("0")).quantize(Decimal("0.01"))


def test_a_fill_marks_the_position_at_its_price_so_the_days_pnl_counts_each_rupee_once(option):
    """After a scale or a partial exit the books are marked at the fill's price at once,
    not at the last mark of the old quantity: the day's net P&L (what the loss cap reads)
    equals realised plus the open quantity at the fill price, less charges, before the
    next mark arrives — and after a restart that only replays fills."""
    from risk.context import daily_net_pnl
    from trading.orders.accounting import mark_to_market

    lot = option.lot_size
    ids = iter(range(300, 400))

    def filled(side: str, lots: int, price: str, second: int) -> Position:
        n = next(ids)
        order = _order(option, client_order_id=f"QHTEST{n:010d}", quantity=lots * lot, side=side)
        remote = _remote(order, BrokerStatus.TRADED, lots * lot)
        settle(order.pk, remote, [_trade(order, f"M-{n}", lots * lot, price, second)], now=T0, account="default")
        return Position.objects.get(instrument=option, strategy=None)

    def consistent(position: Position) -> None:
        assert position.unrealised_pnl == (
            (position.last_price - position.average_price) * position.net_quantity
        ).quantize(Decimal("0.01"))
        expected = position.realised_pnl + position.unrealised_pnl - position.charges
        assert daily_net_pnl("default", T0) == expected

    position = filled(Order.Side.BUY, 2, "100.00", 0)
    consistent(position)
    mark_to_market(position, Decimal("110.00"))  # marked: 2 lots up ₹10
    position.save()
    position = filled(Order.Side.BUY, 2, "120.00", 1)  # scale at 120: the old mark is gone
    assert position.last_price == Decimal("120.00") and position.unrealised_pnl == Decimal("20.00") * 2 * lot
    consistent(position)
    mark_to_market(position, Decimal("125.00"))
    position.save()
    position = filled(Order.Side.SELL, 3, "115.00", 2)  # a partial exit realises; the rest is at 115
    assert position.realised_pnl == Decimal("5.00") * 3 * lot and position.net_quantity == lot
    assert position.unrealised_pnl == Decimal("5.00") * lot
    consistent(position)
