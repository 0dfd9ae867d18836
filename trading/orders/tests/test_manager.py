from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from audit.models import AuditRecord
from risk.models import RiskLimits
from trading.brokers.base import Throttled, Unknown
from trading.brokers.ratelimit import RateLimiter
from trading.conftest import quote
from trading.models import Fill, Order, PaperOrder, Position, Trade
from trading.orders.manager import OrderManager, OrderRefused

pytestmark = pytest.mark.django_db(transaction=True)
S = Order.State


class Flaky:
    """Wraps the paper broker to lose acknowledgements, time out, or throttle."""

    def __init__(self, inner, mode):
        self.inner, self.mode, self.calls = inner, mode, 0

    async def place_order(self, request):
        self.calls += 1
        if self.mode == "lost_ack":
            await self.inner.place_order(request)
            raise Unknown("connection reset after sending")
        if self.mode == "never_arrived":
            raise Unknown("connection reset before sending")
        if self.mode == "timeout":
            await self.inner.place_order(request)
            await asyncio.sleep(10)
        if self.mode == "throttled" and self.calls == 1:
            raise Throttled("DH-904 rate limit", retry_after=0.01)
        return await self.inner.place_order(request)

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def submit(oms, instrument, **kw):
    kw.setdefault("side", Order.Side.BUY)
    kw.setdefault("quantity", instrument.lot_size)
    kw.setdefault("limit_price", Decimal("100.00"))
    return await oms.submit(instrument=instrument, **kw)


async def test_the_intent_is_committed_before_the_broker_is_called(oms, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    seen = {}
    place = oms.broker.place_order

    async def spy(request):
        seen["state"] = (
            await Order.objects.filter(client_order_id=request.correlation_id).values_list("state", flat=True).aget()
        )
        return await place(request)

    oms.broker.place_order = spy
    order = await submit(oms, option)
    assert seen["state"] == S.SUBMITTING
    assert order.state == S.FILLED and order.filled_quantity == option.lot_size
    assert order.committed_at and order.sent_at and order.acked_at and order.first_fill_at
    actions = await sync_to_async(list)(AuditRecord.objects.values_list("action", flat=True))
    assert actions[:1] == ["order.intent"] and "order.fill" in actions


async def test_a_fill_opens_a_position_and_a_round_trip_closes_a_trade(oms, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    await submit(oms, option)
    position = await Position.objects.aget(instrument=option)
    assert position.net_quantity == option.lot_size and position.average_price == Decimal("100.00")
    clock.advance(5)
    quote(book, clock, option, "110.00", "110.05")
    await submit(oms, option, side=Order.Side.SELL, limit_price=Decimal("110.00"), purpose=Order.Purpose.EXIT)
    trade = await Trade.objects.aget(instrument=option)
    assert trade.gross_pnl == Decimal("10.00") * option.lot_size
    assert (await Position.objects.aget(instrument=option)).net_quantity == 0


async def test_every_stamp_of_an_order_and_its_fill_is_on_the_engines_clock(oms, book, clock, option):
    """The demo's simulated clock runs days behind the wall: an order stamped by the wall
    would fall outside "today's orders" of reconciliation and of a restart's rebuild."""
    quote(book, clock, option, "99.95", "100.00")
    order = await submit(oms, option)
    now = clock.now()
    assert order.created_at == order.committed_at <= now
    assert (now - order.created_at).total_seconds() < 1
    position = await Position.objects.aget(instrument=option)
    record = await AuditRecord.objects.filter(action="order.intent").afirst()
    assert position.opened_at <= now and record.created_at == order.committed_at
    assert abs((order.created_at - timezone.now()).total_seconds()) > 3600  # the simulated clock, not the wall


async def test_a_reject_is_recorded_with_code_and_reason(oms, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    order = await submit(oms, option, quantity=1)
    assert order.state == S.REJECTED and order.reject_code == "DH-905"
    assert "lot size" in order.reason


async def test_a_lost_ack_is_resolved_by_lookup_not_by_resending(paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    broker = Flaky(paper, "lost_ack")
    oms = OrderManager(broker, RateLimiter(rate=1000), clock=clock, book=book, unknown_resolve_s=0.5)
    order = await submit(oms, option)
    assert broker.calls == 1
    assert order.state == S.FILLED and order.broker_order_id
    assert await PaperOrder.objects.acount() == 1


async def test_an_order_that_never_arrived_stays_pending_then_is_not_at_broker_after_the_grace_window(
    paper, book, clock, option
):
    quote(book, clock, option, "99.95", "100.00")
    broker = Flaky(paper, "never_arrived")
    oms = OrderManager(
        broker, RateLimiter(rate=1000), clock=clock, book=book, unknown_resolve_s=0.3, not_found_grace_s=30
    )
    order = await submit(oms, option)
    assert order.state == S.UNKNOWN and "not listed at the broker yet" in order.reason
    await oms.sync()
    assert (await Order.objects.aget(pk=order.pk)).state == S.UNKNOWN  # inside the grace window
    clock.advance(31)
    await oms.sync()
    order = await Order.objects.aget(pk=order.pk)
    assert order.state == S.REJECTED and order.reject_code == "NOT_AT_BROKER"
    assert broker.calls == 1 and await PaperOrder.objects.acount() == 0


async def test_a_timeout_is_unknown_then_resolved(paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    oms = OrderManager(
        Flaky(paper, "timeout"),
        RateLimiter(rate=1000),
        clock=clock,
        book=book,
        call_timeout_s=0.2,
        unknown_resolve_s=0.5,
    )
    order = await submit(oms, option)
    assert order.state == S.FILLED and order.unknown_at is not None


async def test_throttling_waits_and_retries_once(paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    broker = Flaky(paper, "throttled")
    oms = OrderManager(broker, RateLimiter(rate=1000), clock=clock, book=book)
    order = await submit(oms, option)
    assert order.state == S.SUBMITTING  # the caller does not wait out the pause
    await oms.wait_for_retries()
    order = await Order.objects.aget(pk=order.pk)
    assert order.state == S.FILLED and broker.calls == 2


async def test_the_slippage_filter_refuses_wide_spreads_with_the_reason_recorded(oms, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    held = await submit(oms, option)  # something to exit later
    assert held.state == S.FILLED
    clock.advance(1)
    quote(book, clock, option, "99.00", "100.00")  # 1 % spread
    order = await submit(oms, option)
    assert order.state == S.REJECTED and order.reject_code == "SLIPPAGE"
    assert "spread" in order.reason and await PaperOrder.objects.acount() == 1
    exit_order = await submit(
        oms, option, side=Order.Side.SELL, limit_price=Decimal("99.00"), purpose=Order.Purpose.EXIT
    )
    assert exit_order.reject_code != "SLIPPAGE"  # exits are never blocked by the filter


async def test_under_80_percent_filled_after_a_second_the_rest_is_cancelled(oms, book, clock, option):
    lot = option.lot_size
    quote(book, clock, option, "99.95", "100.00", ask_qty=lot)
    order = await submit(oms, option, quantity=4 * lot)
    assert order.state == S.PARTIAL and order.filled_quantity == lot
    clock.advance(1.2)
    events = await oms.sync()
    order = await Order.objects.aget(pk=order.pk)
    assert order.state == S.CANCELLED and order.filled_quantity == lot
    assert "remainder cancelled" in order.reason
    assert [e.state for e in events if hasattr(e, "state")] == [S.CANCELLED]
    assert [e.quantity for e in events if hasattr(e, "price")] == [lot]  # the fill that came with the ack
    assert (await Position.objects.aget(instrument=option)).net_quantity == lot


async def test_requotes_are_capped_in_count_and_chase(oms, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    order = await submit(oms, option, limit_price=Decimal("99.90"))
    assert order.state == S.OPEN
    order = await oms.requote(order, Decimal("99.95"))
    assert order.requote_count == 1 and order.limit_price == Decimal("99.95")
    with pytest.raises(OrderRefused, match="chases more than"):
        await oms.requote(order, Decimal("100.05"))
    order = await oms.requote(order, Decimal("99.85"))
    order = await oms.requote(order, Decimal("99.80"))
    with pytest.raises(OrderRefused, match="requote cap reached"):
        await oms.requote(order, Decimal("99.85"))


async def test_recover_leaves_nothing_new_or_submitting_and_resends_nothing(oms, paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    new = await sync_to_async(oms._create)(
        client_order_id="QHNEW", instrument=option, side="BUY", quantity=65, limit_price=Decimal("100.00")
    )
    sent = await sync_to_async(oms._create)(
        client_order_id="QHSENT",
        instrument=option,
        side="BUY",
        quantity=65,
        limit_price=Decimal("100.00"),
        state=S.SUBMITTING,
    )
    lost = await sync_to_async(oms._create)(
        client_order_id="QHLOST",
        instrument=option,
        side="BUY",
        quantity=65,
        limit_price=Decimal("100.00"),
        state=S.SUBMITTING,
    )
    from trading.brokers.base import OrderType, PlaceRequest, Side

    await paper.place_order(
        PlaceRequest(
            "QHSENT", option.security_id, option.exchange_segment, Side.BUY, 65, OrderType.LIMIT, Decimal("100.00")
        )
    )
    counts = await oms.recover()
    states = dict(await sync_to_async(list)(Order.objects.values_list("client_order_id", "state")))
    # Not listed yet is not final: the lost one stays pending for the grace window.
    assert states == {"QHNEW": S.CANCELLED, "QHSENT": S.FILLED, "QHLOST": S.UNKNOWN}
    assert counts == {"cancelled_new": 1, "resolved": 1, "not_at_broker": 0, "unresolved": 1}
    assert await PaperOrder.objects.acount() == 1
    assert await Fill.objects.acount() == 1
    del new, sent, lost


async def test_a_risk_limit_change_reaches_the_next_order(oms, book, clock, option):
    quote(book, clock, option, "99.90", "100.00")  # 0.1 % spread passes the default 0.3 %
    from risk.services import save_risk_limits

    limits = await sync_to_async(RiskLimits.active)()
    limits.max_spread_pct_of_mid = Decimal("0.05")
    await sync_to_async(save_risk_limits)(limits, actor="risk1")
    order = await submit(oms, option)
    assert order.reject_code == "SLIPPAGE"


async def test_sending_the_same_order_twice_calls_the_broker_once(paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    broker = Flaky(paper, "ok")
    oms = OrderManager(broker, RateLimiter(rate=1000), clock=clock, book=book)
    order = await sync_to_async(oms._create)(
        client_order_id="QHTWICE",
        instrument=option,
        side="BUY",
        quantity=option.lot_size,
        limit_price=Decimal("100.00"),
    )
    await asyncio.gather(oms.send(order), oms.send(order), oms.send(order))
    assert broker.calls == 1 and await PaperOrder.objects.acount() == 1
