"""A resting exit follows the touch (a stop that the market ran away from must still fill)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from trading.conftest import quote
from trading.engine.engine import Engine
from trading.models import Alert, Order, Position

pytestmark = pytest.mark.django_db(transaction=True)


async def _engine(paper, book, clock) -> Engine:
    from asgiref.sync import sync_to_async

    return await sync_to_async(lambda: Engine(feed=None, broker=paper, clock=clock, book=book))()


async def _long_with_resting_exit(engine, paper, book, clock, option):
    from asgiref.sync import sync_to_async

    await sync_to_async(quote)(book, clock, option, "100.00", "100.10")
    buy = await engine.oms.submit(
        instrument=option,
        side="BUY",
        quantity=option.lot_size,
        limit_price=Decimal("100.10"),
        check_slippage_rule=False,
    )
    await paper.on_market_data()
    await engine.oms.sync()
    assert (await Order.objects.aget(pk=buy.pk)).state == Order.State.FILLED
    # The stop goes out at 95.00 while the market falls straight through it.
    await sync_to_async(quote)(book, clock, option, "90.00", "90.10")
    sell = await engine.oms.submit(
        instrument=option,
        side="SELL",
        quantity=option.lot_size,
        limit_price=Decimal("95.00"),
        purpose=Order.Purpose.EXIT,
        check_slippage_rule=False,
        reason="stop -25%",
    )
    await paper.on_market_data()
    await engine.oms.sync()
    return await Order.objects.aget(pk=sell.pk)


async def test_a_stop_the_market_ran_away_from_is_repriced_to_the_bid_and_fills(paper, book, clock, option):
    engine = await _engine(paper, book, clock)
    sell = await _long_with_resting_exit(engine, paper, book, clock, option)
    assert sell.state == Order.State.OPEN  # resting above the bid: without help it never fills
    clock.advance(1)
    await engine._work_exits([sell.pk])
    await paper.on_market_data()
    await engine.oms.sync()
    sell = await Order.objects.aget(pk=sell.pk)
    assert sell.state == Order.State.FILLED and sell.limit_price == Decimal("90.00") and sell.modification_count == 1
    assert (await Position.objects.aget(instrument=option)).net_quantity == 0


async def test_past_the_modification_cap_the_exit_is_sent_again_with_an_alert(paper, book, clock, option):
    engine = await _engine(paper, book, clock)
    sell = await _long_with_resting_exit(engine, paper, book, clock, option)
    await Order.objects.filter(pk=sell.pk).aupdate(modification_count=engine._limits.max_modifications_per_order)
    await engine._work_exits([sell.pk])
    assert (await Order.objects.aget(pk=sell.pk)).state == Order.State.CANCELLED
    again = await Order.objects.exclude(pk=sell.pk).filter(purpose=Order.Purpose.EXIT).aget()
    assert again.limit_price == Decimal("90.00") and again.quantity == option.lot_size
    await paper.on_market_data()
    await engine.oms.sync()
    assert (await Order.objects.aget(pk=again.pk)).state == Order.State.FILLED
    assert await Alert.objects.filter(source="oms", title__startswith=f"Exit {sell.client_order_id} re-sent").aexists()
