"""For any interleaving of kills (between any two writes of the order path) and
broker replies, a restart and one reconciliation leave our orders, fills and
positions equal to the broker's, and no order is ever sent twice.

A kill is simulated in process: at the chosen checkpoint a ``Killed`` exception
unwinds everything (an open transaction rolls back, as the database does for a
dead process) and the pending work of the "dead" process is dropped. The paper
broker's account is in the same database, so it survives, as a real broker's
does."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal

import pytest
from django.db.models import Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trading import checkpoints
from trading.brokers.base import Throttled, Unknown
from trading.brokers.paper import PaperBroker
from trading.brokers.ratelimit import RateLimiter
from trading.conftest import quote
from trading.models import Fill, Order, PaperAccount, PaperOrder, PaperPosition, PaperTrade, Position
from trading.orders.manager import OrderManager
from trading.orders.reconcile import reconcile

pytestmark = pytest.mark.django_db(transaction=True)

POINTS = (
    "oms.before_commit",
    "oms.after_commit",
    "oms.before_broker_call",
    "broker.before_commit",
    "broker.after_commit",
    "broker.before_fill",
    "oms.after_ack",
    "oms.before_settle",
    "oms.settle_between_fills_and_state",
)
REPLIES = ("ok", "throttle", "throttle_after", "unknown_after", "lost")


class Killed(BaseException):
    """The process died here."""


class Replies:
    """The paper broker, answering each send as the example says; counts sends for an id it already has."""

    def __init__(self, inner: PaperBroker, replies: list[str]):
        self.inner, self.replies, self.sends = inner, list(replies), Counter()
        self.sent_twice = 0

    async def place_order(self, request):
        if await self.inner.get_order_by_correlation(request.correlation_id) is not None:
            self.sent_twice += 1
        self.sends[request.correlation_id] += 1
        reply = self.replies.pop(0) if self.replies else "ok"
        if reply == "throttle":
            raise Throttled("HTTP 429", retry_after=0.0)
        if reply == "lost":
            raise Unknown("connection reset before sending")
        ack = await self.inner.place_order(request)
        if reply == "throttle_after":
            raise Throttled("DH-904", retry_after=0.0)
        if reply == "unknown_after":
            raise Unknown("HTTP 502")
        return ack

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _clean():
    for model in (Fill, Position, PaperTrade, PaperPosition, PaperOrder, PaperAccount):
        model.objects.all().delete()
    Order.objects.filter(parent__isnull=False).delete()
    Order.objects.all().delete()


def _books():
    ours = {o.client_order_id: o for o in Order.objects.all()}
    theirs = {o.correlation_id: o for o in PaperOrder.objects.all()}
    return ours, theirs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sides=st.lists(st.tuples(st.sampled_from(["BUY", "SELL"]), st.integers(1, 14)), min_size=1, max_size=4),
    replies=st.lists(st.sampled_from(REPLIES), max_size=8),
    kill=st.one_of(st.none(), st.tuples(st.sampled_from(POINTS), st.integers(1, 4))),
)
def test_after_any_kill_a_restart_and_one_reconciliation_agree_with_the_broker(
    option, clock, book, sides, replies, kill
):
    _clean()
    quote(book, clock, option, "99.95", "100.00")
    capital = Decimal("100000000")

    async def first_life():
        broker = Replies(PaperBroker(clock=clock, book=book, capital=capital), replies)
        oms = OrderManager(
            broker, RateLimiter(rate=10_000), clock=clock, book=book, unknown_resolve_s=0.0, not_found_grace_s=3600
        )
        seen = Counter()

        def hook(name):
            if kill and name == kill[0]:
                seen[name] += 1
                if seen[name] == kill[1]:
                    raise Killed(name)

        checkpoints.install(hook)
        try:
            for side, lots in sides:
                price = Decimal("100.00") if side == "BUY" else Decimal("99.95")
                # Above the quoted 650 units an order fills in part and rests for the next quote.
                await oms.submit(instrument=option, side=side, quantity=option.lot_size * lots, limit_price=price)
                await oms.wait_for_retries()
                clock.advance(1)
                quote(book, clock, option, "99.95", "100.00")
                await broker.inner.on_market_data()
                await oms.sync()
        except Killed:
            for task in list(oms._retries):  # the process is gone, and its tasks with it
                task.cancel()
        finally:
            checkpoints.install(None)
        return broker

    async def restart():
        broker = Replies(PaperBroker(clock=clock, book=book, capital=capital), [])
        oms = OrderManager(broker, RateLimiter(rate=10_000), clock=clock, book=book, not_found_grace_s=3600)
        await oms.recover()
        result = await reconcile(broker, clock=clock)
        return broker, result

    first = asyncio.run(first_life())
    second, result = asyncio.run(restart())

    ours, theirs = _books()
    assert first.sent_twice == 0 and second.sent_twice == 0  # nothing is ever sent twice
    assert set(theirs) <= set(ours)  # no broker order we do not know
    for cid, remote in theirs.items():
        order = ours[cid]
        assert order.filled_quantity == remote.filled_quantity, (cid, order.state, remote.status)
        assert order.broker_order_id == remote.broker_order_id
    assert set(Fill.objects.values_list("broker_trade_id", flat=True)) == set(
        PaperTrade.objects.values_list("trade_id", flat=True)
    )
    ours_net = Position.objects.aggregate(n=Sum("net_quantity"))["n"] or 0
    broker_net = PaperPosition.objects.aggregate(n=Sum("net_quantity"))["n"] or 0
    assert ours_net == broker_net
    assert not Order.objects.filter(state__in=[Order.State.NEW, Order.State.SUBMITTING]).exists()
    # What the broker never got stays pending (looked for), it is not at the broker and holds nothing.
    for order in Order.objects.filter(state=Order.State.UNKNOWN):
        assert order.client_order_id not in theirs and order.filled_quantity == 0
    assert result.clean, [(b.kind, b.key, b.ours, b.broker) for b in result.breaks]
