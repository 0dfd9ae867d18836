"""Broker truth repairs our books: fills lost between an acknowledgement and its
trades, orders that turned up late, idempotently and audited; the account halts
only for what the broker's books cannot explain, and says so when that clears."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db.models import Sum

from audit.models import AuditRecord
from risk.models import TradingState
from trading.brokers.base import OrderType, PlaceRequest, Side
from trading.conftest import quote
from trading.models import Alert, Fill, Order, PaperPosition, Position, ReconciliationBreak
from trading.orders.reconcile import CLEARED_REASON, reconcile

pytestmark = pytest.mark.django_db(transaction=True)
S = Order.State


async def _buy(oms, option, lots=1):
    return await oms.submit(
        instrument=option, side="BUY", quantity=option.lot_size * lots, limit_price=Decimal("100.00")
    )


async def _our_net(option):
    return (await Position.objects.filter(instrument=option).aaggregate(n=Sum("net_quantity")))["n"] or 0


async def _broker_net(option):
    return (await PaperPosition.objects.filter(security_id=option.security_id).aaggregate(n=Sum("net_quantity")))[
        "n"
    ] or 0


async def _lose_fills(order):
    """What a kill between the acknowledgement and its trades used to leave: FILLED, nothing filled."""
    await Fill.objects.filter(order=order).adelete()
    await Position.objects.all().adelete()
    await Order.objects.filter(pk=order.pk).aupdate(filled_quantity=0, average_price=None)


async def test_a_filled_order_with_its_fills_lost_is_repaired_from_the_trade_book(oms, paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    order = await _buy(oms, option, lots=2)
    assert order.state == S.FILLED
    await _lose_fills(order)
    result = await reconcile(paper, account="default", clock=clock)
    assert result.clean and result.repaired == 1
    repaired = await Order.objects.aget(pk=order.pk)
    assert repaired.filled_quantity == order.quantity and repaired.state == S.FILLED
    assert await _our_net(option) == await _broker_net(option) == order.quantity
    assert await AuditRecord.objects.filter(action="reconciliation.repaired").acount() == 1
    # Idempotent: a second run changes nothing and records nothing more.
    again = await reconcile(paper, account="default", clock=clock)
    assert again.clean and again.repaired == 0
    assert await Fill.objects.filter(order=order).acount() == 1
    assert await AuditRecord.objects.filter(action="reconciliation.repaired").acount() == 1


async def test_an_order_called_not_at_broker_that_shows_up_later_is_adopted_with_its_fills(
    oms, paper, book, clock, option
):
    quote(book, clock, option, "99.95", "100.00")
    order = await sync_to_async(oms._create)(
        client_order_id="QHLATE",
        instrument=option,
        side="BUY",
        quantity=option.lot_size,
        limit_price=Decimal("100.00"),
        state=S.REJECTED,
        reject_code="NOT_AT_BROKER",
    )
    # The broker lists it only now (Dhan's listing lag), already traded.
    await paper.place_order(
        PlaceRequest(
            "QHLATE",
            option.security_id,
            option.exchange_segment,
            Side.BUY,
            option.lot_size,
            OrderType.LIMIT,
            Decimal("100.00"),
        )
    )
    result = await reconcile(paper, clock=clock)
    assert result.clean and result.repaired == 1
    adopted = await Order.objects.aget(pk=order.pk)
    assert adopted.state == S.FILLED and adopted.filled_quantity == option.lot_size and adopted.broker_order_id
    assert await _our_net(option) == await _broker_net(option) == option.lot_size
    assert await AuditRecord.objects.filter(action="order.repaired", subject="order:QHLATE").aexists()


async def test_what_broker_truth_cannot_explain_halts_naming_both_sides_and_the_clearing_is_said(
    oms, paper, book, clock, option
):
    quote(book, clock, option, "99.95", "100.00")
    await _buy(oms, option)
    # A position at the broker no order of ours accounts for.
    sid = option.security_id
    await PaperPosition.objects.filter(security_id=sid).aupdate(net_quantity=3 * option.lot_size)
    result = await reconcile(paper, clock=clock)
    (item,) = result.breaks
    assert item.kind == ReconciliationBreak.Kind.POSITION_MISMATCH
    assert item.ours == {"net_quantity": option.lot_size} and item.broker == {"net_quantity": 3 * option.lot_size}
    state = await TradingState.objects.aget(account="default")
    assert state.state == TradingState.State.HALTED
    await PaperPosition.objects.filter(security_id=sid).aupdate(net_quantity=option.lot_size)
    assert (await reconcile(paper, clock=clock)).clean
    state = await TradingState.objects.aget(account="default")
    # Still HALTED (a risk manager resumes), and the state says why.
    assert state.state == TradingState.State.HALTED and state.reason == CLEARED_REASON
    assert await Alert.objects.filter(title__startswith="Reconciliation clean").acount() == 1


async def test_with_auto_resume_allowed_a_cleared_break_resumes_trading(oms, paper, book, clock, option, settings):
    settings.QUANTHUB_RECONCILE_AUTO_RESUME = True
    quote(book, clock, option, "99.95", "100.00")
    await _buy(oms, option)
    sid = option.security_id
    await PaperPosition.objects.filter(security_id=sid).aupdate(net_quantity=0)
    assert not (await reconcile(paper, clock=clock)).clean
    await PaperPosition.objects.filter(security_id=sid).aupdate(net_quantity=option.lot_size)
    assert (await reconcile(paper, clock=clock)).clean
    assert (await TradingState.objects.aget(account="default")).state == TradingState.State.ACTIVE
