from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command

from audit.verify import verify
from marketdata.book import QuoteBook
from marketdata.demo import ensure_demo_instruments
from marketdata.feeds.simulator import SimulatorFeed
from marketdata.storage import SnapshotWriter
from quanthub.clock import IST, SimulatedClock
from trading.brokers.paper import PaperBroker
from trading.engine.engine import Engine
from trading.models import Order, Position, Signal, Strategy, Trade

pytestmark = pytest.mark.django_db(transaction=True)
DAY = dt.date(2026, 11, 23)


def _engine(start: dt.time, end: dt.time, clock=None):
    clock = clock or SimulatedClock(dt.datetime.combine(DAY, start, tzinfo=IST) - dt.timedelta(seconds=1))
    book = QuoteBook()
    feed = SimulatorFeed(clock=clock, seed=7, scenario="default", trading_day=DAY, start_time=start, end_time=end)
    broker = PaperBroker(clock=clock, book=book)
    return Engine(feed=feed, broker=broker, clock=clock, book=book, writer=SnapshotWriter()), clock


@pytest.fixture
def enabled(db):
    ensure_demo_instruments(DAY)
    Strategy.objects.filter(key="vol_oi").update(enabled=True)


async def test_the_engine_trades_the_simulated_session_end_to_end(enabled):
    engine, _ = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 30))
    stats = await engine.run()
    assert stats.snapshots > 500 and stats.orders >= 2
    signals = await sync_to_async(list)(Signal.objects.values_list("key", "phase"))
    assert signals and all(key.startswith("vol_oi:") for key, _ in signals)
    probe = await Order.objects.filter(purpose="ENTRY").order_by("created_at").afirst()
    assert probe.state == Order.State.FILLED and probe.snapshot_at and probe.gate_passed_at and probe.acked_at
    # The 09:16:30 NIFTY call runs +45 % in four minutes: the take-profit closes it.
    trade = await Trade.objects.filter(exit_reason__startswith="target").order_by("closed_at").afirst()
    assert trade is not None and trade.gross_pnl > 0 and trade.charges > 0 and trade.net_pnl < trade.gross_pnl
    phases = dict(signals)
    assert phases[f"vol_oi:132611240245000:{DAY:%Y%m%d}091630"] == "CLOSED"
    assert (await sync_to_async(verify)()).ok


async def test_an_engine_killed_mid_trade_resumes_it_without_a_duplicate_entry(enabled):
    first, clock = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 17, 30))
    await first.run()  # stops at 09:17:30 with the 09:16:30 probe open
    open_trades = (await Strategy.objects.aget(key="vol_oi")).state["trades"]
    assert len(open_trades) == 1
    # The open option position is marked for the dashboards: price, Greeks, the strategy's exits.
    [trade] = open_trades.values()
    held = await Position.objects.select_related("instrument").aget(instrument__security_id=trade["security_id"])
    assert held.net_quantity > 0 and held.last_price and held.unrealised_pnl is not None
    assert 0 < held.delta < 1 and held.gamma > 0 and held.theta < 0 and held.vega > 0
    average = (
        float(trade["cost"]) / trade["held"]
    )  # the exits act on the strategy's own average (cost saved exactly, as a string)
    assert float(held.stop_price) == pytest.approx(average * 0.75, abs=0.05)
    assert float(held.target_price) == pytest.approx(average * 1.40, abs=0.05)
    assert held.ttl_seconds == 600
    [key] = open_trades
    second, _ = await sync_to_async(_engine)(dt.time(9, 17, 31), dt.time(9, 24), clock=clock)
    await second.run()
    entries = await Order.objects.filter(purpose="ENTRY", signal__key=key).acount()
    assert entries == 1  # resumed, not re-entered
    assert await Order.objects.filter(purpose="EXIT", signal__key=key, state=Order.State.FILLED).aexists()
    assert (await Signal.objects.aget(key=key)).phase == "CLOSED"


async def test_an_engine_whose_state_lags_its_orders_never_enters_a_signal_twice(enabled):
    first, _ = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 17))
    await first.run()
    [key] = (await Strategy.objects.aget(key="vol_oi")).state["trades"]
    phase = (await Signal.objects.aget(key=key)).phase
    # As if the engine had died between the probe order and saving the strategy state:
    # a new engine (a standby taking over, a restart) sees the same informed flow again.
    await Strategy.objects.filter(key="vol_oi").aupdate(state={})
    second, _ = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 17))
    second.writer = None  # the first run stored these minutes' market data already
    stats = await second.run()
    assert await Order.objects.filter(purpose="ENTRY", signal__key=key).acount() == 1
    assert await Order.objects.filter(purpose="HEDGE", signal__key=key).acount() == 1  # no hedge for a refused entry
    assert stats.refused >= 1
    assert (await Signal.objects.aget(key=key)).phase == phase  # the first entry's signal row is left alone


async def test_the_engine_saves_a_strategy_state_with_its_orders(enabled):
    engine, _ = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 17))
    engine.reconcile_every_s = 10_000  # no periodic save within the run
    await engine.start()
    async for item in engine.feed:
        await engine.tick(item)
        if await Order.objects.filter(purpose="ENTRY").aexists():
            break
    # The probe's order is in: its trade is already in the saved state, before any periodic save.
    order = await Order.objects.select_related("signal").aget(purpose="ENTRY")
    assert order.signal.key in (await Strategy.objects.aget(key="vol_oi")).state["trades"]
    await engine.shutdown()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "dhan"], "--broker dhan needs DHAN_CLIENT_ID"),
        (["--feed", "replay"], "--feed replay needs --date"),
        (["--speed", "warp"], "--speed takes a positive number or 'max'"),
        (["--port", "70000"], "--port must be between 1 and 65535"),
        (["--scenario", "/nonexistent.json"], "Cannot read scenario"),
    ],
)
def test_bad_flags_stop_before_anything_starts(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("run_engine", *args)


def test_an_unknown_flag_value_is_refused_by_the_parser(capsys):
    with pytest.raises((CommandError, SystemExit)):
        call_command("run_engine", "--broker", "zerodha")


def _change_strategy(**fields):
    from trading.services import save_strategy

    strategy = Strategy.objects.get(key="vol_oi")
    for name, value in fields.items():
        setattr(strategy, name, value)
    save_strategy(strategy, actor="user:risk1", changed=list(fields))


async def _run_until(engine, condition, then):
    """Run the engine; when ``condition()`` first holds (polled), call ``then()`` — a
    change made in the admin while the engine trades — and let the session finish."""
    import asyncio

    task = asyncio.ensure_future(engine.run())
    while not task.done():
        if await sync_to_async(condition)():
            await sync_to_async(then)()
            break
        await asyncio.sleep(0.02)
    return await task


async def test_a_params_change_in_the_admin_reaches_the_running_engine_at_the_next_snapshot(enabled):
    engine, _ = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 17, 30))
    # Changed as soon as the engine trades, long before the 09:16:30 signal.
    await _run_until(engine, lambda: engine.started.is_set(), lambda: _change_strategy(params={"probe_lots": 3}))
    probe = await Order.objects.select_related("instrument").filter(purpose="ENTRY").order_by("created_at").afirst()
    assert probe is not None and probe.quantity == 3 * probe.instrument.lot_size  # not the default 2 lots


async def test_disabling_a_strategy_stops_new_entries_at_once_and_open_trades_still_exit(enabled):
    engine, _ = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 24))
    await _run_until(
        engine,
        lambda: Order.objects.filter(purpose="ENTRY").exists(),
        lambda: _change_strategy(enabled=False),
    )
    entries = await sync_to_async(list)(Order.objects.filter(purpose="ENTRY").values_list("signal__key", flat=True))
    # The 09:16:30 NIFTY probe went in; the 09:19 BANKNIFTY flow came after the switch: no entry.
    assert len(set(entries)) == 1 and entries[0].endswith("091630")
    # The open trade is left to its own exit rules: the take-profit closes it.
    trade = await Trade.objects.filter(exit_reason__startswith="target").afirst()
    assert trade is not None
