"""The daily-loss breaker with broker truth: a loss our books alone show (a trade booked
at a wrong price) never flattens or halts the account; a loss the broker confirms does."""

from __future__ import annotations

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from audit.models import AuditRecord
from marketdata.book import Quote
from risk.breakers import confirm_daily_loss
from risk.context import daily_net_pnl
from risk.models import BreakerTrip, TradingState
from trading.brokers.base import Unavailable
from trading.conftest import open_legs
from trading.models import Alert, Order, Position, Trade
from trading.orders.daily_loss import DailyLossGuard
from trading.orders.root import build_order_path

pytestmark = pytest.mark.django_db(transaction=True)
CAP = Decimal("25000")


@pytest.mark.parametrize(
    ("ours", "broker_gross", "charges", "trip"),
    [
        ("-24999.99", "0", "0", False),  # below the cap: nothing to confirm
        ("-25000.00", "-24900.00", "100.00", True),  # the broker's figure less our charges is at the cap
        ("-25000.00", "-24400.00", "100.00", True),  # 2 % inside it: marks and charges round apart
        ("-25000.00", "-24399.99", "100.00", False),  # a paisa further: not confirmed
        ("-228000.00", "29000.00", "120.00", False),  # the ₹0 exit: the broker shows a profit
        ("-26000.00", None, "0", True),  # no broker figure: our books decide, the cap stays hard
        ("-26000.00", "-30000.00", "0", True),  # the broker's loss is worse
    ],
)
def test_the_rule_trips_only_on_a_loss_the_broker_confirms_or_cannot_deny(ours, broker_gross, charges, trip):
    verdict = confirm_daily_loss(
        ours_net=Decimal(ours),
        ours_charges=Decimal(charges),
        broker_gross=None if broker_gross is None else Decimal(broker_gross),
        cap=CAP,
    )
    assert verdict.trip is trip, verdict.why


class Spawned(list):
    async def __call__(self, coro):
        self.append(coro)


async def _guard(paper, clock, book):
    path = await sync_to_async(build_order_path)("default", clock=clock, book=book, broker=paper)
    spawned = Spawned()
    return DailyLossGuard(path, spawned), spawned


async def _phantom_loss(leg, clock, amount: Decimal) -> None:
    """A trade booked at exit price ₹0: a loss only our books have."""
    await Trade.objects.acreate(
        instrument=leg,
        direction="LONG",
        quantity=leg.lot_size,
        entry_price=Decimal("100.00"),
        exit_price=Decimal("0.00"),
        opened_at=clock.now(),
        closed_at=clock.now(),
        gross_pnl=-amount,
        charges=Decimal("0"),
        net_pnl=-amount,
        risk_amount=Decimal("0"),
    )


async def test_a_loss_only_our_books_show_stops_entries_alerts_and_never_flattens(paper, oms, book, clock, demo_market):
    legs = await open_legs(oms, book, 2)
    guard, spawned = await _guard(paper, clock, book)
    await _phantom_loss(legs[0], clock, Decimal("228000"))
    ours = await sync_to_async(daily_net_pnl)("default", clock.now())
    assert ours <= -CAP
    for _ in range(3):  # the engine asks every second: one alert, one audit record, the broker asked once
        await guard.check(clock.now(), ours, CAP)
        clock.advance(1)
    assert spawned == [] and not guard.handled
    assert not await BreakerTrip.objects.filter(breaker="daily_loss").aexists()
    assert not await Order.objects.filter(purpose=Order.Purpose.KILL).aexists()
    assert await Position.objects.exclude(net_quantity=0).acount() == 2  # nothing flattened
    state = await TradingState.objects.aget(account="default")
    assert state.state == TradingState.State.REDUCING and state.actor == "breaker:daily_loss"
    alerts = [a async for a in Alert.objects.filter(level="CRITICAL", source="risk")]
    assert len(alerts) == 1 and "-228" in alerts[0].message and "broker" in alerts[0].title
    record = await AuditRecord.objects.aget(action="risk.daily_loss_disputed")
    assert Decimal(record.payload["ours"]) == ours and Decimal(record.payload["broker"]) > -CAP
    # Reconciliation repairs the books: the figures agree again and trading resumes.
    await Trade.objects.filter(exit_price=Decimal("0.00")).adelete()
    await guard.check(clock.now(), await sync_to_async(daily_net_pnl)("default", clock.now()), CAP)
    state = await TradingState.objects.aget(account="default")
    assert state.state == TradingState.State.ACTIVE
    assert await AuditRecord.objects.filter(action="risk.daily_loss_settled").aexists()


async def test_a_loss_the_broker_confirms_trips_the_breaker_and_flattens(paper, oms, book, clock, demo_market):
    legs = await open_legs(oms, book, 2)
    guard, spawned = await _guard(paper, clock, book)
    # The market falls 60 % on both legs: the broker's marks show the loss too.
    for leg in legs:
        q = book.get(leg.security_id)
        book.set(Quote(leg.security_id, q.bid * 0.4, q.ask * 0.4, q.bid_qty, q.ask_qty, q.bid * 0.4, clock.now()))
    held = [p async for p in Position.objects.exclude(net_quantity=0).select_related("instrument")]
    loss = sum(
        (Decimal(str(round(book.get(p.instrument.security_id).bid, 2))) - p.average_price) * p.net_quantity
        for p in held
    )
    cap = (-loss * Decimal("0.9")).quantize(Decimal("0.01"))  # a cap the fall clearly passes
    await guard.check(clock.now(), loss, cap)
    assert guard.handled and len(spawned) == 1
    result = await spawned[0]
    assert result.flat and not await Position.objects.exclude(net_quantity=0).aexists()
    trip = await BreakerTrip.objects.aget(breaker="daily_loss")
    assert "confirms" in trip.details["verdict"]
    assert (await TradingState.objects.aget(account="default")).state == TradingState.State.HALTED


async def test_without_a_broker_figure_our_books_decide(paper, oms, book, clock, demo_market):
    legs = await open_legs(oms, book, 1)
    guard, spawned = await _guard(paper, clock, book)
    await _phantom_loss(legs[0], clock, Decimal("30000"))

    async def down():
        raise Unavailable("HTTP 503 from the broker")

    guard.path.broker.positions = down
    await guard.check(clock.now(), await sync_to_async(daily_net_pnl)("default", clock.now()), CAP)
    assert guard.handled and len(spawned) == 1
    spawned[0].close()  # not run: the decision is what is tested
