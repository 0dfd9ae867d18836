"""An entry's second: the requote toward the touch, then the partial-fill rule at exactly 1 s."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from audit.models import AuditRecord
from marketdata.feeds.simulator import SimulatorFeed
from risk.models import RiskLimits
from trading.conftest import quote
from trading.engine.engine import Engine
from trading.models import Order
from trading.orders.tests.test_manager import submit

pytestmark = pytest.mark.django_db(transaction=True)
S = Order.State


@pytest.mark.parametrize(("waited", "cancelled"), [(0.999, False), (1.0, True), (1.001, True)])
async def test_the_partial_fill_rule_fires_at_exactly_one_second(oms, book, clock, option, waited, cancelled):
    lot = option.lot_size
    quote(book, clock, option, "99.95", "100.00", ask_qty=lot)
    order = await submit(oms, option, quantity=4 * lot)
    assert order.state == S.PARTIAL
    clock.advance(waited)
    await oms.sync()
    order = await Order.objects.aget(pk=order.pk)
    assert (order.state == S.CANCELLED) is cancelled


async def test_the_rule_applies_in_the_sync_that_brought_the_fill(oms, book, clock, option, paper):
    """Acknowledged OPEN with nothing filled; at 1 s a fill lands and the same sync cancels
    the rest (25 % < 80 %), instead of a second later."""
    lot = option.lot_size
    quote(book, clock, option, "99.95", "100.05", ask_qty=lot)
    order = await submit(oms, option, quantity=4 * lot, limit_price=Decimal("100.00"))
    assert order.state == S.OPEN and order.filled_quantity == 0
    clock.advance(1.0)
    quote(book, clock, option, "99.95", "100.00", ask_qty=lot)
    await paper.on_market_data()  # one lot fills at 100.00
    await oms.sync()
    order = await Order.objects.aget(pk=order.pk)
    assert order.state == S.CANCELLED and order.filled_quantity == lot


async def test_a_cancelled_order_records_why_it_was_cancelled(oms, book, clock, option):
    lot = option.lot_size
    quote(book, clock, option, "99.95", "100.00", ask_qty=lot)
    order = await submit(oms, option, quantity=4 * lot, reason="scale")
    clock.advance(1.0)
    await oms.sync()
    order = await Order.objects.aget(pk=order.pk)
    assert order.state == S.CANCELLED and order.reason.startswith("25% filled after 1000 ms")
    record = await AuditRecord.objects.filter(action="order.cancelled").alatest("id")
    assert record.payload["reason"] == order.reason


@sync_to_async
def _engine(paper, book, clock):
    feed = SimulatorFeed(clock=clock, seed=7, trading_day=clock.now().date())
    return Engine(feed=feed, broker=paper, clock=clock, book=book)


async def test_an_entry_follows_the_touch_three_times_within_ten_paise_then_the_rule_takes_over(
    paper, book, clock, option
):
    engine = await _engine(paper, book, clock)
    engine._limits = await RiskLimits.objects.afirst() or RiskLimits()
    quote(book, clock, option, "99.95", "100.00", ask_qty=6500)
    # The ask moved between the snapshot and the order: it rests at 99.95 unfilled.
    order = await submit(engine.oms, option, quantity=option.lot_size, limit_price=Decimal("99.95"))
    quote(book, clock, option, "99.95", "100.00", ask_qty=0)
    assert order.state == S.OPEN
    engine._resting_entries.add(order.pk)
    prices = []
    for ask in ("100.00", "100.05", "100.20", "100.30"):
        clock.advance(0.2)
        quote(book, clock, option, "99.90", ask, ask_qty=0)  # nothing offered: no fill
        await engine._requote_entries(clock.now())
        prices.append((await Order.objects.aget(pk=order.pk)).limit_price)
    # 100.00, 100.05, then capped at first + ₹0.10 = 100.05; the cap spent, no fourth.
    assert prices == [Decimal("100.00"), Decimal("100.05"), Decimal("100.05"), Decimal("100.05")]
    order = await Order.objects.aget(pk=order.pk)
    assert order.requote_count == 2 and order.first_price == Decimal("99.95")
    assert await AuditRecord.objects.filter(action="order.requoted").acount() == 2


async def test_no_requote_at_or_after_one_second_and_at_most_three(paper, book, clock, option):
    engine = await _engine(paper, book, clock)
    engine._limits = RiskLimits()
    quote(book, clock, option, "99.95", "100.00", ask_qty=0)
    order = await submit(engine.oms, option, quantity=option.lot_size, limit_price=Decimal("99.90"))
    engine._resting_entries.add(order.pk)
    for step in ("99.95", "100.00", "99.95", "100.00"):
        clock.advance(0.1)
        quote(book, clock, option, "99.85", step, ask_qty=0)
        await engine._requote_entries(clock.now())
        quote(book, clock, option, "99.85", "99.85", ask_qty=0)
    order = await Order.objects.aget(pk=order.pk)
    assert order.requote_count <= 3
    late = await submit(engine.oms, option, quantity=option.lot_size, limit_price=Decimal("99.90"))
    engine._resting_entries.add(late.pk)
    clock.advance(1.0)  # exactly at 1 s the window has closed
    quote(book, clock, option, "99.85", "99.95", ask_qty=0)
    await engine._requote_entries(clock.now())
    assert (await Order.objects.aget(pk=late.pk)).requote_count == 0
