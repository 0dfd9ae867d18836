"""Every way out: Kill All, a position's exit, the daily-loss flatten — on the paper
broker, through the real order manager, with the broker failing where it hurts."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from audit.models import AuditRecord
from marketdata.ticks import is_on_tick
from quanthub.clock import SimulatedClock
from risk.breakers import next_session_open
from risk.models import BreakerTrip, TradingState
from trading import selectors
from trading.brokers.base import Unknown
from trading.brokers.chaos import ChaosBroker
from trading.brokers.paper import PaperBroker
from trading.conftest import open_legs
from trading.dashboard import render_panel
from trading.models import Alert, Order, PaperAccount, PaperPosition, Position, Signal, Strategy, Trade
from trading.orders import flatten
from trading.orders.root import _CarriedClock, build_order_path

pytestmark = pytest.mark.django_db(transaction=True)


async def _path(broker, clock, book, **kw):
    return await sync_to_async(build_order_path)("default", clock=clock, book=book, broker=broker, **kw)


async def test_kill_all_from_the_cli_flattens_futures_and_options_on_their_ticks(oms, book, demo_market, capsys):
    legs = await open_legs(oms, book, 4, futures=True)
    assert {i.kind for i in legs} >= {"FUT", "CE"}
    # No engine runs: the command works the request itself, pricing from the stored quotes.
    await sync_to_async(call_command, thread_sensitive=False)("kill_all", "--actor", "ops", "--reason", "drill")
    out = capsys.readouterr().out
    assert "FLAT: 4 legs, 4 exits sent, 4 filled, 0 rejected" in out and "kill switch on" in out, out
    kills = [o async for o in Order.objects.filter(purpose=Order.Purpose.KILL).select_related("instrument")]
    assert len(kills) == 4 and all(o.state == Order.State.FILLED for o in kills)
    # Each exit priced on its own instrument's tick: ₹0.05 options, ₹0.10 / ₹0.20 futures.
    ticks = {o.instrument.tick_size for o in kills}
    assert ticks == {Decimal("0.05"), Decimal("0.10"), Decimal("0.20")}
    assert all(is_on_tick(o.limit_price, o.instrument.tick_size) for o in kills)
    assert not await PaperPosition.objects.exclude(net_quantity=0).aexists()
    assert not await Position.objects.exclude(net_quantity=0).aexists()
    assert (await PaperAccount.objects.aget(account="default")).kill_switch_active
    record = await AuditRecord.objects.filter(action="kill_all.finished").alatest("seq")
    assert record.payload["flat"] is True and record.payload["filled"] == 4
    assert (await TradingState.objects.aget(account="default")).state == TradingState.State.HALTED


async def test_a_leg_the_broker_keeps_rejecting_is_reported_open_with_a_critical_alert(
    paper, oms, book, clock, demo_market
):
    legs = await open_legs(oms, book, 3, futures=True)
    future = next(i for i in legs if i.kind == "FUT")
    broker = ChaosBroker(paper, fault_rate=1.0, faults=("stale_price",), only={future.security_id})
    path = await _path(broker, clock, book)
    result = await flatten.kill_all(path, actor="risk1", reason="drill", deadline_s=2.0)

    assert result.flat is False and result.kill_switch is False
    assert result.still_open == [f"{future.display} +{2 * future.lot_size}"]
    leg = next(d for d in result.detail if d["security_id"] == future.security_id)
    assert leg["rejected"] >= 2 and leg["filled"] == 0
    assert any("price band" in why for why in leg["why"]), leg["why"]
    assert result.filled == 2  # the other two legs are out
    record = await AuditRecord.objects.filter(action="kill_all.finished").alatest("seq")
    assert record.payload["flat"] is False and record.payload["still_open"] == result.still_open
    critical = await Alert.objects.aget(level="CRITICAL", title__contains="NOT flat")
    assert future.display in critical.message
    assert await Alert.objects.filter(level="WARNING", title__contains=f"{future.display} rejected").aexists()
    panel = await sync_to_async(render_panel)("killall", {"stage": "done", **result.as_dict()})
    assert "NOT flat" in panel and future.display in panel


async def test_rejects_throttles_unknowns_and_5xx_are_retried_at_the_touch_until_flat(
    paper, oms, book, clock, demo_market
):
    await open_legs(oms, book, 6, futures=True)
    broker = ChaosBroker(paper, fault_rate=0.5, seed=3)
    # The engine's market time carried on at wall speed, as a standalone Kill All writes.
    path = await _path(broker, _CarriedClock(clock.now(), timezone.now()), book)
    path.oms.unknown_resolve_s = 0.3
    # An unknown outcome the broker has not listed stays pending for the grace window (never
    # resent blind); here the window is short so the leg is re-sent within the deadline.
    path.oms.not_found_grace_s = 0.5
    result = await flatten.kill_all(path, actor="risk1", reason="drill", deadline_s=20.0)
    assert sum(broker.injected.values()) >= 3, broker.injected
    assert result.flat, result.summary()
    assert not await PaperPosition.objects.exclude(net_quantity=0).aexists()
    # Never two exits for one quantity: what was sold is exactly what was held.
    for position in [p async for p in PaperPosition.objects.all()]:
        assert position.net_quantity == 0
    assert broker.max_in_window(1.0) <= 9


class _LosesEachLegOnce(ChaosBroker):
    """Every leg's first send is lost before the broker read it: the reply never comes
    and the broker never lists it."""

    def __init__(self, inner):
        super().__init__(inner, fault_rate=0.0)
        self.lost: set[str] = set()

    async def place_order(self, request):
        if request.security_id not in self.lost:
            self.lost.add(request.security_id)
            self.calls.append((self._clock(), "place"))
            raise Unknown("connection reset before the broker read it")
        return await super().place_order(request)


async def test_a_lost_kill_all_leg_is_given_up_after_the_exit_window_and_sent_once_more(
    paper, oms, book, clock, demo_market
):
    await open_legs(oms, book, 4, futures=True)
    broker = _LosesEachLegOnce(paper)
    path = await _path(broker, _CarriedClock(clock.now(), timezone.now()), book)
    window = path.oms.exit_not_found_grace_s
    assert window == settings.QUANTHUB_EXIT_NOT_FOUND_GRACE_S == 1.0
    # Inside a deadline a 3-second window would not leave room for: lost, looked up, re-sent.
    result = await flatten.kill_all(path, actor="risk1", reason="drill", deadline_s=4.0)
    assert result.flat, result.summary()
    assert not await PaperPosition.objects.exclude(net_quantity=0).aexists()
    kills = [o async for o in Order.objects.filter(purpose=Order.Purpose.KILL).order_by("pk")]
    lost = [o for o in kills if o.state == Order.State.REJECTED]
    assert len(lost) == 4 and {o.reject_code for o in lost} == {"NOT_AT_BROKER"}
    assert all(o.reason == f"the broker has no order with this correlation id after {window:g} s" for o in lost)
    # Never given up early, never sent twice: each leg's one re-send came after its window.
    for order in lost:
        again = [o for o in kills if o.instrument_id == order.instrument_id and o.pk != order.pk]
        assert [o.state for o in again] == [Order.State.FILLED]
        assert (order.rejected_at - order.unknown_at).total_seconds() >= window
        assert again[0].created_at >= order.rejected_at


async def test_the_daily_loss_flatten_closes_the_hedge_too_and_halts_until_the_next_session(
    paper, oms, book, clock, demo_market
):
    await open_legs(oms, book, 3, futures=True)
    path = await _path(paper, clock, book)
    result = await flatten.daily_loss_flatten(path, net_pnl=Decimal("-26000"), cap=Decimal("25000"))
    assert result.flat and result.kill_switch is False  # the broker switch is Kill All's alone
    assert not await Position.objects.exclude(net_quantity=0).aexists()  # futures hedge included
    state = await TradingState.objects.aget(account="default")
    assert state.state == TradingState.State.HALTED and state.halted_until == next_session_open(clock.now())
    trip = await BreakerTrip.objects.aget(breaker="daily_loss")
    assert trip.tripped_at == clock.now()  # the engine's clock, not the wall
    assert await Alert.objects.filter(level="CRITICAL", title="daily_loss breaker tripped").aexists()
    assert await flatten.daily_loss_flatten(path, net_pnl=Decimal("-100"), cap=Decimal("25000")) is None


async def test_a_positions_exit_closes_the_hedge_opened_for_the_same_signal(paper, oms, book, clock, demo_market):
    legs = await open_legs(oms, book, 2, futures=True)  # leaves no option: one future of each
    await open_legs(oms, book, 3)
    option = await Position.objects.select_related("instrument").filter(instrument__kind="CE").afirst()
    hedge = await Position.objects.select_related("instrument").aget(instrument=legs[0])
    strategy = await Strategy.objects.afirst()
    signal = await Signal.objects.acreate(
        strategy=strategy, instrument=option.instrument, key="sig-1", detected_at=clock.now()
    )
    await Position.objects.filter(pk__in=[option.pk, hedge.pk]).aupdate(signal=signal)
    path = await _path(paper, clock, book)
    result = await flatten.exit_position(path, option.pk, actor="user:trader1")
    assert result.flat and result.legs == 2, result.summary()
    assert (await Position.objects.aget(pk=option.pk)).net_quantity == 0
    assert (await Position.objects.aget(pk=hedge.pk)).net_quantity == 0
    others = Position.objects.exclude(pk__in=[option.pk, hedge.pk]).exclude(net_quantity=0)
    assert await others.acount() == 3  # the rest is left alone
    # Exiting is not halting.
    assert not await TradingState.objects.filter(state=TradingState.State.HALTED).aexists()


async def test_a_rejected_exit_shows_rejected_and_why_on_the_row_and_raises_an_alert(
    paper, oms, book, clock, demo_market
):
    [future] = [i for i in await open_legs(oms, book, 2, futures=True) if i.underlying.symbol == "BANKNIFTY"]
    position = await Position.objects.aget(instrument=future)
    broker = ChaosBroker(paper, fault_rate=1.0, faults=("stale_price",), only={future.security_id})
    path = await _path(broker, clock, book)
    result = await flatten.exit_position(path, position.pk, actor="user:trader1", deadline_s=1.5)
    assert result.flat is False and result.rejected >= 1
    [row] = [r for r in await sync_to_async(selectors.open_positions)() if r.position.pk == position.pk]
    assert row.exit_state["state"] == "rejected:" and row.exit_state["detail"].startswith("DH-906")
    html = await sync_to_async(render_panel)("positions")
    assert "rejected:" in html and "DH-906" in html
    assert await Alert.objects.filter(title__contains=f"leg {future.display} rejected").aexists()
    assert await Alert.objects.filter(level="CRITICAL", title__startswith="Exit NOT flat").aexists()


async def test_a_trade_closes_at_its_exit_fills_whatever_clock_stamped_them(paper, oms, book, clock, option):
    from trading.conftest import quote

    quote(book, clock, option, "99.95", "100.00")
    await oms.submit(
        instrument=option,
        side="BUY",
        quantity=option.lot_size,
        limit_price=Decimal("100.00"),
        check_slippage_rule=False,
    )
    # The exit's fill carries a clock a day behind the one the position opened on.
    behind = SimulatedClock(clock.now() - dt.timedelta(days=1))
    other = PaperBroker(clock=behind, book=book, capital=Decimal("1000000"))
    path = await _path(other, behind, book, shared=False)
    quote(book, clock, option, "110.00", "110.05")
    sell = await path.oms.submit(
        instrument=option, side="SELL", quantity=option.lot_size, limit_price=Decimal("110.00"), purpose="EXIT"
    )
    assert sell.state == Order.State.FILLED
    trade = await Trade.objects.aget(instrument=option)
    assert trade.exit_price == Decimal("110.00") and trade.entry_price == Decimal("100.00")
    assert trade.gross_pnl == Decimal("10.00") * option.lot_size and trade.quantity == option.lot_size


async def test_a_second_exit_for_the_same_units_is_never_sent(oms, book, clock, option):
    from trading.conftest import quote
    from trading.orders.claims import ExitClaimed

    quote(book, clock, option, "99.95", "100.00")
    await oms.submit(
        instrument=option,
        side="BUY",
        quantity=option.lot_size,
        limit_price=Decimal("100.00"),
        check_slippage_rule=False,
    )
    quote(book, clock, option, "90.00", "90.05")
    resting = await oms.submit(
        instrument=option, side="SELL", quantity=option.lot_size, limit_price=Decimal("95.00"), purpose="EXIT"
    )
    assert resting.state == Order.State.OPEN
    with pytest.raises(ExitClaimed):
        await oms.submit(
            instrument=option, side="SELL", quantity=option.lot_size, limit_price=Decimal("90.00"), purpose="KILL"
        )
    assert await Order.objects.filter(side="SELL").acount() == 1
