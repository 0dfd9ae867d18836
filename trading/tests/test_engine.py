from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command

from audit.verify import verify
from trading import writes
from trading.conftest import DAY, sim_engine
from trading.models import Order, Position, Signal, Strategy, Trade

pytestmark = pytest.mark.django_db(transaction=True)


def _engine(start: dt.time, end: dt.time, clock=None):
    return sim_engine(start, end, clock)


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
    average = float(held.average_price)  # the exits act on the average of the fills
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
    # The state is rebuilt from the book, so the trade the lost state forgot is managed:
    # it exits by its rules, option and hedge, and ends flat.
    assert phase in ("PROBE", "SCALED")
    assert await Order.objects.filter(purpose="EXIT", signal__key=key, state=Order.State.FILLED).acount() == 2
    assert (await Signal.objects.aget(key=key)).phase == "CLOSED"
    assert not await Position.objects.exclude(net_quantity=0).aexists()


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


async def test_a_stopping_engine_sends_its_queued_dashboard_facts_and_says_it_stopped(enabled):
    import asyncio

    from channels.layers import get_channel_layer

    from trading import events

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.group_name(), channel)
    received: list[dict] = []

    async def listen():
        while True:
            received.append(await layer.receive(channel))

    listener = asyncio.create_task(listen())
    engine, _ = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 15, 20))
    failed = events.stats["failed"]
    await engine.run()
    # Nothing is left queued when the engine has stopped: the loop may end now.
    box = events._outboxes[asyncio.get_running_loop()]
    assert not box.queue and box.idle.is_set()
    for _ in range(50):
        if received and received[-1]["data"].get("role") == "STOPPED":
            break
        await asyncio.sleep(0.01)
    listener.cancel()
    await layer.group_discard(events.group_name(), channel)
    assert received[-1]["kind"] == "heartbeat" and received[-1]["data"]["role"] == "STOPPED"
    assert received[-1]["data"]["engine"] == engine.engine_id
    assert events.stats["failed"] == failed


async def test_a_channel_layer_that_hangs_does_not_hold_the_engines_stop(enabled, monkeypatch, caplog):
    import asyncio

    from channels.layers import get_channel_layer

    from trading import events
    from trading.engine import engine as engine_module
    from trading.models import EngineHeartbeat

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(events.group_name(), channel)

    async def hangs(group, message):
        await asyncio.sleep(3600)

    monkeypatch.setattr(layer, "group_send", hangs)
    monkeypatch.setattr(engine_module, "LAST_FACTS_S", 0.2)
    engine, _ = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 15, 10))
    await asyncio.wait_for(engine.run(), 60)
    # The engine stopped and its books say so; the dashboards' loss is a warning.
    beat = await EngineHeartbeat.objects.aget(engine_id=engine.engine_id)
    assert beat.role == EngineHeartbeat.Role.STOPPED
    assert "last dashboard facts not sent" in caplog.text
    monkeypatch.undo()
    box = events._outboxes[asyncio.get_running_loop()]
    box.task.cancel()
    box.queue.clear()
    box.idle.set()
    await layer.group_discard(events.group_name(), channel)


@pytest.mark.django_db
def test_marking_reads_the_positions_again_after_any_fill_and_never_marks_a_row_that_moved(enabled, monkeypatch):
    """Marking keeps the open positions it read while no fill of this process moved one
    (for at most a wall-clock second). A fill of this process is marked on its new
    quantity at the next mark; a row another process moved is never written with the
    old quantity's mark, and is read again at the next one."""
    from decimal import Decimal

    from marketdata.book import Quote
    from marketdata.models import Instrument
    from quanthub.clock import IST
    from trading.orders.accounting import apply_fill

    engine, clock = sim_engine(dt.time(10, 0), dt.time(10, 5))
    option = Instrument.objects.filter(kind="CE", expiry__gte=DAY).order_by("expiry", "strike").first()
    engine._instruments_by_pk[option.pk] = option
    strategy = Strategy.objects.get(key="vol_oi")
    lot = option.lot_size

    def order(n: int, side=Order.Side.BUY) -> Order:
        return Order.objects.create(
            instrument=option,
            strategy=strategy,
            client_order_id=f"QHMARK{n:010d}",
            side=side,
            quantity=lot,
            limit_price=Decimal("100.00"),
            state=Order.State.OPEN,
        )

    def quote(bid: float, ask: float) -> None:
        engine.book.set(Quote(option.security_id, bid, ask, 10**5, 10**5, bid, clock.now()))

    at = dt.datetime.combine(DAY, dt.time(10, 0), tzinfo=IST)
    apply_fill(order(1), trade_id="T1", quantity=lot, price=Decimal("100.00"), at=at)
    reads = []
    real_read = engine._open_positions
    monkeypatch.setattr(engine, "_open_positions", lambda: reads.append(1) or real_read())

    def row() -> Position:
        return Position.objects.get(instrument=option, account="default")

    quote(109.95, 110.05)
    engine._mark_positions()
    assert (row().last_price, row().unrealised_pnl) == (Decimal("110.00"), Decimal(10 * lot))
    quote(111.95, 112.05)
    engine._mark_positions()
    assert len(reads) == 1 and row().unrealised_pnl == Decimal(12 * lot)  # kept: nothing moved it
    # A fill of this process: the next mark reads the position again (two lots now).
    apply_fill(order(2), trade_id="T2", quantity=lot, price=Decimal("112.00"), at=at)
    quote(113.95, 114.05)
    engine._mark_positions()
    assert len(reads) == 2 and row().net_quantity == 2 * lot
    assert row().unrealised_pnl == (Decimal("114.00") - row().average_price) * 2 * lot
    # Another process's fill moves the row (its writes are not counted here): the kept
    # copy's mark is not written over it.
    counted = dict(writes._counts)
    Position.objects.filter(pk=row().pk).update(
        net_quantity=3 * lot, average_price=Decimal("110.0000"), unrealised_pnl=Decimal("0.00")
    )
    monkeypatch.setattr(writes, "_counts", counted)
    quote(115.95, 116.05)
    engine._mark_positions()
    assert len(reads) == 2 and row().unrealised_pnl == Decimal("0.00")  # the conditional update missed
    engine._mark_positions()
    assert len(reads) == 3 and row().unrealised_pnl == Decimal(6 * 3 * lot)  # read again, marked on 3 lots
    # This process's write to a position that is not a fill (a repair): read again.
    Position.objects.filter(pk=row().pk).update(charges=Decimal("40.00"))
    engine._mark_positions()
    assert len(reads) == 4
    engine._mark_positions()
    assert len(reads) == 4
    # Kept for at most the wall-clock window.
    monkeypatch.setattr("trading.engine.engine.POSITIONS_KEPT_S", 0.0)
    engine._mark_positions()
    assert len(reads) == 5


@pytest.mark.django_db
def test_marks_made_sooner_than_the_write_window_wait_for_the_next_statement_whatever_runs_it(enabled, monkeypatch):
    """At full speed a mark is not written at every simulated second: it waits for the
    next statement on the engine's connection, or a later mark past ``MARKS_WRITE_S``.
    Any read through that connection, by the ORM or raw SQL, and any write, finds it
    written first; a mark that waits while another process moves the row misses it."""
    from decimal import Decimal

    from django.db import connection

    from marketdata.book import Quote
    from marketdata.models import Instrument
    from quanthub.clock import IST
    from trading.engine import engine as engine_module
    from trading.orders.accounting import apply_fill

    engine, clock = sim_engine(dt.time(10, 0), dt.time(10, 5))
    option = Instrument.objects.filter(kind="CE", expiry__gte=DAY).order_by("expiry", "strike").first()
    engine._instruments_by_pk[option.pk] = option
    strategy = Strategy.objects.get(key="vol_oi")
    lot = option.lot_size
    at = dt.datetime.combine(DAY, dt.time(10, 0), tzinfo=IST)
    buy = Order.objects.create(
        instrument=option,
        strategy=strategy,
        client_order_id="QHWAIT0000000001",
        side=Order.Side.BUY,
        quantity=lot,
        limit_price=Decimal("100.00"),
        state=Order.State.OPEN,
    )
    apply_fill(buy, trade_id="W1", quantity=lot, price=Decimal("100.00"), at=at)
    pk = Position.objects.get(instrument=option).pk
    marks = []

    def mark(mid: float) -> None:
        engine.book.set(Quote(option.security_id, mid - 0.05, mid + 0.05, 10**5, 10**5, mid, clock.now()))
        before = writes.generation((writes.MARKS,))
        engine._mark_positions()
        marks.append(writes.generation((writes.MARKS,)) - before)

    def raw_last_price() -> Decimal:
        with connection.cursor() as cursor:
            cursor.execute("SELECT last_price FROM trading_position WHERE id = %s", [pk])
            return Decimal(str(cursor.fetchone()[0])).quantize(Decimal("0.01"))

    mark(110.0)  # the first mark: written at once
    assert marks == [1] and Position.objects.get(pk=pk).last_price == Decimal("110.00")
    mark(111.0)
    mark(112.0)
    assert marks == [1, 0, 0]  # within the window: waiting
    assert raw_last_price() == Decimal("112.00")  # a raw read finds the latest written first
    assert sum(marks) == 1 and writes.generation((writes.MARKS,)) > 0
    mark(113.0)
    Strategy.objects.filter(pk=strategy.pk).update(name="Volume-OI")  # any statement, a write of another table
    assert raw_last_price() == Decimal("113.00")
    # Past the window the mark is written at once.
    monkeypatch.setattr(engine_module, "MARKS_WRITE_S", 0.0)
    mark(114.0)
    assert marks[-1] == 1
    monkeypatch.setattr(engine_module, "MARKS_WRITE_S", 3600.0)
    # A waiting mark whose row another process moves meanwhile misses it: the conditional
    # update finds another quantity, the row is read again at the next mark.
    mark(115.0)
    assert marks[-1] == 0
    counter = next(w for w in connection.execute_wrappers if isinstance(w, writes._Counter))
    waiting, counter.waiting = counter.waiting, []  # another process's statement does not run it
    counted = dict(writes._counts)
    Position.objects.filter(pk=pk).update(net_quantity=2 * lot, average_price=Decimal("105.0000"))
    monkeypatch.setattr(writes, "_counts", counted)  # nor is its write counted here
    counter.waiting = waiting
    assert raw_last_price() == Decimal("114.00")  # the waiting mark ran first and missed
    assert engine._positions_kept is None and engine._waiting_marks == {}
    mark(116.0)
    row = Position.objects.get(pk=pk)
    assert (row.net_quantity, row.last_price) == (2 * lot, Decimal("116.00"))
    assert row.unrealised_pnl == (Decimal("116.00") - Decimal("105.0000")) * 2 * lot


@pytest.mark.django_db(transaction=True)  # the failing statement is not inside the test's transaction
def test_a_waiting_mark_whose_write_fails_drops_what_marking_kept_and_is_marked_again(enabled, monkeypatch):
    """The database fails just as a waiting mark is written, inside another statement:
    that statement fails too (the caller sees the database error it would have met),
    nothing kept from before is trusted (the positions and today's P&L are read again),
    and the next mark, once the database is back, writes the position's mark."""
    from decimal import Decimal

    from django.db import OperationalError, transaction

    from marketdata.book import Quote
    from marketdata.models import Instrument
    from quanthub.clock import IST
    from trading.engine import engine as engine_module
    from trading.orders.accounting import apply_fill

    engine, clock = sim_engine(dt.time(10, 0), dt.time(10, 5))
    option = Instrument.objects.filter(kind="CE", expiry__gte=DAY).order_by("expiry", "strike").first()
    engine._instruments_by_pk[option.pk] = option
    buy = Order.objects.create(
        instrument=option,
        strategy=Strategy.objects.get(key="vol_oi"),
        client_order_id="QHFAIL0000000001",
        side=Order.Side.BUY,
        quantity=option.lot_size,
        limit_price=Decimal("100.00"),
        state=Order.State.OPEN,
    )
    with transaction.atomic():
        apply_fill(buy, trade_id="F1", quantity=option.lot_size, price=Decimal("100.00"), at=clock.now())
    now = dt.datetime.combine(DAY, dt.time(10, 0), tzinfo=IST)

    def mark(mid: float) -> None:
        engine.book.set(Quote(option.security_id, mid - 0.05, mid + 0.05, 10**5, 10**5, mid, clock.now()))
        engine._mark_positions()

    mark(110.0)  # written at once
    engine._books_read = engine_module.BooksRead(0, 0, 0.0, now.date(), Decimal("0"), Decimal("0"))  # a figure kept
    monkeypatch.setattr(engine_module, "MARKS_WRITE_S", 3600.0)
    mark(111.0)  # waits
    assert engine._waiting_marks and engine._positions_kept is not None

    def lost(*args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(engine, "_update_mark", lost)
    with pytest.raises(OperationalError):
        Strategy.objects.filter(key="vol_oi").update(name="Volume-OI")  # the statement that wrote it
    assert engine._waiting_marks == {} and engine._positions_kept is None and engine._books_read is None
    monkeypatch.undo()  # the database is back
    assert Position.objects.get(instrument=option).last_price == Decimal("110.00")  # the lost mark is not there
    mark(112.0)
    assert Position.objects.get(instrument=option).last_price == Decimal("112.00")
