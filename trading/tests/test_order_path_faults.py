"""The order path under the broker's bad replies: a throttle after the broker
took the order, an expired token mid-lookup, a 200 reply that says REJECTED,
and a re-price that fills in its own reply."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from audit.models import AuditRecord
from trading.brokers.base import AuthExpired, BrokerStatus, Throttled, Unknown
from trading.brokers.ratelimit import RateLimiter
from trading.conftest import quote
from trading.models import Alert, Fill, Order, PaperOrder
from trading.orders.manager import OrderManager

pytestmark = pytest.mark.django_db(transaction=True)
S = Order.State


class Scripted:
    """The paper broker with one scripted misbehaviour."""

    def __init__(self, inner, mode):
        self.inner, self.mode, self.places, self.lookups, self.renewals = inner, mode, 0, 0, 0

    async def place_order(self, request):
        self.places += 1
        if self.mode == "throttle_after":
            await self.inner.place_order(request)
            raise Throttled("DH-904: Too many requests", retry_after=0.0)
        if self.mode == "token_during_lookup":
            await self.inner.place_order(request)
            raise Unknown("HTTP 502")
        ack = await self.inner.place_order(request)
        if self.mode in ("rejected_200", "rejected_200_bare"):
            reason = "" if self.mode == "rejected_200_bare" else "RMS: margin shortfall"
            return dataclasses.replace(ack, status=BrokerStatus.REJECTED, reject_code="DH-906", reason=reason)
        return ack

    async def get_order_by_correlation(self, correlation_id):
        self.lookups += 1
        if self.mode == "token_during_lookup" and not self.renewals:
            raise AuthExpired("DH-901: access token expired")
        found = await self.inner.get_order_by_correlation(correlation_id)
        if found is not None and self.mode == "rejected_200_bare":
            return dataclasses.replace(
                found, status=BrokerStatus.REJECTED, reject_code="DH-906", reason="RMS: order price out of range"
            )
        return found

    async def renew_session(self):
        self.renewals += 1
        return True

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _oms(broker, clock, book):
    return OrderManager(broker, RateLimiter(rate=1000), clock=clock, book=book, unknown_resolve_s=1.0)


async def _buy(oms, option):
    return await oms.submit(instrument=option, side="BUY", quantity=option.lot_size, limit_price=Decimal("100.00"))


async def test_a_throttle_after_the_broker_took_the_order_is_looked_up_not_resent(paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    broker = Scripted(paper, "throttle_after")
    oms = _oms(broker, clock, book)
    order = await _buy(oms, option)
    await oms.wait_for_retries()
    order = await Order.objects.aget(pk=order.pk)
    assert broker.places == 1 and broker.lookups >= 1
    assert order.state == S.FILLED and await PaperOrder.objects.acount() == 1
    assert await Fill.objects.filter(order=order).acount() == 1


async def test_an_expired_token_during_the_lookup_alerts_renews_and_resolves_the_order(paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    broker = Scripted(paper, "token_during_lookup")
    oms = _oms(broker, clock, book)
    order = await _buy(oms, option)  # does not raise
    assert broker.renewals == 1 and broker.places == 1
    assert order.state == S.FILLED
    alert = await Alert.objects.aget(source="token")
    assert alert.level == "CRITICAL" and alert.title == "Broker token expired"


@pytest.mark.parametrize(
    ("mode", "message"),
    [("rejected_200", "RMS: margin shortfall"), ("rejected_200_bare", "RMS: order price out of range")],
    ids=["reason-in-the-reply", "reason-from-the-order-book"],
)
async def test_a_200_reply_saying_rejected_keeps_the_code_and_message(paper, book, clock, option, mode, message):
    quote(book, clock, option, "99.95", "100.00")
    oms = _oms(Scripted(paper, mode), clock, book)
    order = await _buy(oms, option)
    assert order.state == S.REJECTED and order.reject_code == "DH-906" and order.reason == message
    record = await AuditRecord.objects.filter(
        action="order.rejected", subject=f"order:{order.client_order_id}"
    ).afirst()
    assert record.payload["code"] == "DH-906" and record.payload["reason"] == message


async def test_a_reprice_that_fills_in_its_own_reply_records_the_fill_at_once(oms, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    await _buy(oms, option)
    exit_order = await oms.submit(
        instrument=option,
        side="SELL",
        quantity=option.lot_size,
        limit_price=Decimal("101.00"),
        purpose=Order.Purpose.EXIT,
    )
    assert exit_order.state == S.OPEN
    repriced = await oms.reprice(exit_order, Decimal("99.95"))  # at the bid: fills in the reply
    assert repriced.state == S.FILLED and repriced.filled_quantity == option.lot_size
    assert await Fill.objects.filter(order=exit_order).acount() == 1
