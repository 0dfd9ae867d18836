from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from risk.models import TradingState
from trading.brokers.base import OrderType, PlaceRequest, Side, Unavailable
from trading.conftest import quote
from trading.models import Order, ReconciliationBreak
from trading.orders.reconcile import adopt_external_order, reconcile, resolve_break

pytestmark = pytest.mark.django_db(transaction=True)
K = ReconciliationBreak.Kind


async def _state():
    return (await TradingState.objects.aget(account="default")).state


async def test_agreeing_books_give_no_breaks(oms, paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    await oms.submit(instrument=option, side="BUY", quantity=option.lot_size, limit_price=Decimal("100.00"))
    result = await reconcile(paper, clock=clock)
    assert result.clean


async def test_an_order_placed_outside_is_a_break_that_halts_until_adopted(
    oms, paper, book, clock, option, risk_manager
):
    quote(book, clock, option, "99.95", "100.00")
    await paper.place_order(
        PlaceRequest(
            "MANUAL1",
            option.security_id,
            option.exchange_segment,
            Side.BUY,
            option.lot_size,
            OrderType.LIMIT,
            Decimal("99.00"),
        )
    )
    result = await reconcile(paper, clock=clock)
    assert [b.kind for b in result.breaks] == [K.EXTRA_AT_BROKER]
    assert result.breaks[0].broker["correlation_id"] == "MANUAL1"
    assert await _state() == TradingState.State.HALTED
    order = await sync_to_async(adopt_external_order)(result.breaks[0], actor=risk_manager.username)
    assert order.purpose == Order.Purpose.EXTERNAL
    assert (await reconcile(paper, clock=clock)).clean


async def test_a_position_difference_is_recorded_with_both_sides(oms, paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    await oms.submit(instrument=option, side="BUY", quantity=option.lot_size, limit_price=Decimal("100.00"))
    from trading.models import Position

    await Position.objects.filter(instrument=option).aupdate(net_quantity=0)
    result = await reconcile(paper, clock=clock)
    breaks = {b.kind: b for b in result.breaks}
    assert breaks[K.POSITION_MISMATCH].ours == {"net_quantity": 0}
    assert breaks[K.POSITION_MISMATCH].broker == {"net_quantity": option.lot_size}
    await sync_to_async(resolve_break)(breaks[K.POSITION_MISMATCH], actor="risk1", resolution="booked by hand")
    assert not await ReconciliationBreak.objects.filter(resolved_at__isnull=True, kind=K.POSITION_MISMATCH).aexists()


async def test_a_missing_position_report_is_not_flat(paper, clock):
    class NoReport:
        async def order_book(self):
            return []

        async def trade_book(self):
            return []

        async def positions(self):
            raise Unavailable("positions endpoint timed out")

    result = await reconcile(NoReport(), clock=clock)
    assert [b.kind for b in result.breaks] == [K.NO_POSITION_REPORT]
    assert await _state() == TradingState.State.HALTED


async def test_repeated_runs_do_not_duplicate_breaks(paper, clock):
    class NoReport:
        async def order_book(self):
            return []

        async def trade_book(self):
            return []

        async def positions(self):
            raise Unavailable("down")

    await reconcile(NoReport(), clock=clock)
    await reconcile(NoReport(), clock=clock)
    assert await ReconciliationBreak.objects.acount() == 1
