"""This process's writes to the books, counted at the statement; and the engine's
second, which asks the database again only after one (or a wall-clock second)."""

from __future__ import annotations

import datetime as dt
import threading
from decimal import Decimal

import pytest
from django.db import connection, connections

from marketdata.models import Instrument
from quanthub.clock import IST
from trading import writes
from trading.conftest import DAY, sim_engine
from trading.models import Order, PaperOrder, Position, Strategy

pytestmark = pytest.mark.django_db


def _order(n: int, **values) -> Order:
    option = Instrument.objects.filter(kind="CE").order_by("security_id").first()
    strategy = Strategy.objects.get(key="vol_oi")
    return Order.objects.create(
        instrument=option,
        strategy=strategy,
        client_order_id=f"QHWRITE{n:09d}",
        side=Order.Side.BUY,
        quantity=option.lot_size,
        limit_price=Decimal("100.00"),
        **values,
    )


def test_every_write_to_the_books_moves_the_generation_and_nothing_else_does(enabled):
    writes.watch_all()

    def step(action) -> bool:
        """Whether ``action`` moved the generation."""
        before = writes.generation()
        action()
        return writes.generation() != before

    order = _order(1, state=Order.State.OPEN)
    assert step(lambda: Order.objects.filter(pk=order.pk).update(state=Order.State.FILLED))
    assert step(lambda: Position.objects.create(instrument=order.instrument, strategy=order.strategy, net_quantity=1))
    assert step(lambda: Position.objects.filter(instrument=order.instrument).delete())
    with connection.cursor() as cursor:  # raw SQL, written in lower case
        assert step(lambda: cursor.execute('update "trading_order" set "reason" = %s', ["x"]))
        assert not step(lambda: cursor.execute('SELECT COUNT(*) FROM "trading_order"'))
    assert not step(lambda: list(Order.objects.all()))
    assert not step(lambda: Strategy.objects.filter(key="vol_oi").update(name="Volume-OI"))  # not the books

    # A position's marks move the books' count (today's P&L reads them) but not what
    # reconciliation compares; the paper broker's books move only their own.
    position = Position.objects.create(instrument=order.instrument, strategy=order.strategy, net_quantity=1)
    books, reconciled = writes.generation(), writes.generation(writes.RECONCILED)
    with writes.marking():
        Position.objects.filter(pk=position.pk).update(last_price=Decimal("101.00"))
    assert writes.generation() == books + 1 and writes.generation(writes.RECONCILED) == reconciled
    Position.objects.filter(pk=position.pk).update(net_quantity=2)  # outside marking: both
    assert writes.generation() == books + 2 and writes.generation(writes.RECONCILED) == reconciled + 1
    paper = ("trading.PaperOrder",)
    before = writes.generation(paper)
    assert not step(lambda: PaperOrder.objects.filter(account="nobody").update(status="CANCELLED"))
    assert writes.generation(paper) == before + 1


def test_the_counter_outlives_an_execute_wrapper_block_it_joined_and_watches_other_threads(enabled):
    connection.execute_wrappers.clear()
    with connection.execute_wrapper(lambda execute, *args: execute(*args)):
        writes.watch(connection)  # joins while another wrapper is on: that block pops its own
    before = writes.generation()
    _order(2)
    assert writes.generation() != before
    writes.watch_all()
    before = writes.generation()
    done = []

    def elsewhere():  # a connection opened in another thread (a test database on SQLite is per thread)
        try:
            conn = connections["default"]
            conn.ensure_connection()
            done.append(any(isinstance(w, writes._Counter) for w in conn.execute_wrappers))
        finally:
            connections.close_all()

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert done == [True] and writes.generation() == before


@pytest.mark.django_db(transaction=True)  # the engine's database thread sees the test's rows
async def test_the_engines_second_reads_again_only_after_a_write_a_new_day_or_a_wall_second(enabled, monkeypatch):
    from asgiref.sync import sync_to_async

    engine, _ = await sync_to_async(sim_engine)(dt.time(10, 0), dt.time(10, 5))
    from trading.engine import config

    engine._config_seen = (config.generation(), float("inf"))  # not started: no configuration to follow
    trips = []
    real = engine._second_reads
    monkeypatch.setattr(engine, "_second_reads", lambda now: trips.append(now) or real(now))
    now = dt.datetime.combine(DAY, dt.time(10, 0), tzinfo=IST)
    assert await engine._the_seconds_reads(now) == ([], Decimal("0.00"))
    assert await engine._the_seconds_reads(now + dt.timedelta(seconds=1)) == ([], Decimal("0.00"))
    assert len(trips) == 1  # nothing written: no trip
    # An order of this process: read at once, and it is live.
    order = await sync_to_async(_order)(3, state=Order.State.OPEN)
    live, pnl = await engine._the_seconds_reads(now + dt.timedelta(seconds=2))
    assert [o.pk for o in live] == [order.pk] and pnl is None and len(trips) == 2
    await engine._the_seconds_reads(now + dt.timedelta(seconds=3))
    assert len(trips) == 3  # something live: every second
    await sync_to_async(Order.objects.filter(pk=order.pk).update)(state=Order.State.CANCELLED)
    await engine._the_seconds_reads(now + dt.timedelta(seconds=4))
    await engine._the_seconds_reads(now + dt.timedelta(seconds=5))
    assert len(trips) == 4
    # A new day's P&L is read, not carried over.
    await engine._the_seconds_reads(now + dt.timedelta(days=1))
    assert len(trips) == 5
    # Another process's write is seen within the wall-clock window.
    monkeypatch.setattr(writes, "RECHECK_S", 0.0)
    await engine._the_seconds_reads(now + dt.timedelta(days=1, seconds=1))
    assert len(trips) == 6


@pytest.mark.django_db(transaction=True)
async def test_a_full_speed_session_reconciles_again_only_after_a_write_and_finds_an_outside_order(
    enabled, monkeypatch
):
    """The running engine on the paper broker: while flat, a reconciliation that is due on
    unchanged books is not run again; an order placed at the broker outside Quant Hub
    is found at the first one due after it."""
    from asgiref.sync import sync_to_async

    from trading.brokers.base import OrderType, PlaceRequest, Side
    from trading.engine import engine as engine_module
    from trading.models import ReconciliationBreak

    await sync_to_async(Strategy.objects.update)(enabled=False)  # flat: nothing of ours is written
    monkeypatch.setattr(writes, "RECHECK_S", 3600.0)  # however slow this machine: only writes count
    engine, clock = await sync_to_async(sim_engine)(dt.time(10, 0), dt.time(10, 10))
    runs: list[dt.datetime] = []
    real = engine_module.reconcile

    def counted(*args, **kwargs):
        runs.append(clock.now())
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "reconcile", counted)
    placed_at = None
    await engine.start()
    try:
        async for item in engine.feed:
            await engine.step(item)
            if placed_at is None and clock.now() >= dt.datetime.combine(DAY, dt.time(10, 5), tzinfo=IST):
                option = await sync_to_async(
                    lambda: next(i for i in Instrument.objects.filter(kind="CE") if engine.book.get(i.security_id))
                )()
                ask = Decimal(str(engine.book.get(option.security_id).ask))
                await engine.broker.place_order(
                    PlaceRequest(
                        "MANUAL9",
                        option.security_id,
                        option.exchange_segment,
                        Side.BUY,
                        option.lot_size,
                        OrderType.LIMIT,
                        ask - option.tick_size * 4,
                    )
                )
                placed_at = clock.now()
    finally:
        await engine.shutdown()
    before = [t for t in runs if t < placed_at]
    after = [t for t in runs if t >= placed_at]
    # Due every 30 s: ten times in the five minutes before the order; run at the start only.
    assert len(before) <= 2, before
    assert after and (after[0] - placed_at).total_seconds() <= engine.reconcile_every_s + 1
    found = await sync_to_async(lambda: list(ReconciliationBreak.objects.values_list("kind", "key")))()
    assert found == [(ReconciliationBreak.Kind.EXTRA_AT_BROKER, "MANUAL9")]
    # Not clean: from then on every due reconciliation runs.
    assert len(after) >= 9


def test_a_strategy_state_just_written_and_unchanged_is_not_written_again(enabled, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    engine, _ = sim_engine(dt.time(10, 0), dt.time(10, 5))
    engine._load()
    (loaded,) = engine.strategies

    def writes_of(**kwargs) -> int:
        with CaptureQueriesContext(connection) as queries:
            engine._persist_states(**kwargs)
        return sum('UPDATE "trading_strategy"' in q["sql"].replace("`", '"') for q in queries)

    assert writes_of() == 1
    assert writes_of() == 0  # the same state, a moment ago
    assert writes_of(always=True) == 1  # at shutdown, whatever was written
    state = {**loaded.strategy.get_state(), "probe": 1}
    monkeypatch.setattr(loaded.strategy, "get_state", lambda: state)
    assert writes_of() == 1  # changed: written
    assert Strategy.objects.get(pk=loaded.row_id).state["probe"] == 1
    written = engine._states_written
    engine._states_written = {pk: (key, wall - 1.5) for pk, (key, wall) in written.items()}  # a second ago
    assert writes_of() == 1  # a wall-clock second on: written again (another process may have)


@pytest.mark.django_db(transaction=True)
async def test_todays_pnl_carried_across_the_marks_is_the_books_figure_at_every_second(enabled, monkeypatch):
    """A full-speed session holding the 09:16:30 probe: each second marks the open
    position, and the P&L the next second uses is carried across those marks, not read
    again. At every second it equals what the books' statement returns at that moment,
    and it moves with the marks."""
    from asgiref.sync import sync_to_async

    from risk.context import daily_net_pnl

    monkeypatch.setattr(writes, "RECHECK_S", 3600.0)  # however slow this machine: only writes count
    engine, clock = await sync_to_async(sim_engine)(dt.time(9, 15), dt.time(9, 19, 30))
    trips, seen = [], []
    real_reads, real_seconds = engine._second_reads, engine._the_seconds_reads

    def counted(now):
        trips.append(now)
        return real_reads(now)

    async def checked(now):
        live, pnl = await real_seconds(now)
        if pnl is not None:
            books = await sync_to_async(daily_net_pnl)(engine.account, now)
            held = await sync_to_async(Position.objects.exclude(net_quantity=0).count)()
            seen.append((now, pnl, books, held))
        return live, pnl

    monkeypatch.setattr(engine, "_second_reads", counted)
    monkeypatch.setattr(engine, "_the_seconds_reads", checked)
    await engine.run()

    held = [(now, pnl, books) for now, pnl, books, n in seen if n]
    assert len(held) > 60, "the probe was held for more than a minute"
    assert [(now, pnl) for now, pnl, _ in held] == [(now, books) for now, _, books in held]
    assert all(str(pnl) == str(books) for _, pnl, books, _ in seen)  # the same figure, to its last digit
    assert len({pnl for _, pnl, _ in held}) > 10, "the marks moved the figure"
    while_held = [t for t in trips if held[0][0] <= t <= held[-1][0]]
    assert len(while_held) < len(held) / 4, (len(while_held), len(held))  # read after a write only


@pytest.mark.django_db(transaction=True)
async def test_a_write_other_than_the_engines_marks_makes_the_next_second_read_the_books(enabled, monkeypatch):
    """What the carried figure may not cover: a position written outside marking (a fill,
    a repair), a mark the engine did not carry, a closed trade. Each makes the next
    second read the books, and it then sees the write."""
    from asgiref.sync import sync_to_async

    from risk.context import daily_net_pnl
    from trading.engine import config
    from trading.models import Trade

    monkeypatch.setattr(writes, "RECHECK_S", 3600.0)
    engine, _ = await sync_to_async(sim_engine)(dt.time(10, 0), dt.time(10, 5))
    engine._config_seen = (config.generation(), float("inf"))
    now = dt.datetime.combine(DAY, dt.time(10, 0), tzinfo=IST)
    option = await sync_to_async(lambda: Instrument.objects.filter(kind="CE").order_by("security_id").first())()
    strategy = await Strategy.objects.aget(key="vol_oi")
    position = await Position.objects.acreate(
        instrument=option,
        strategy=strategy,
        net_quantity=option.lot_size,
        average_price=Decimal("100.0000"),
        opened_at=now,
        realised_pnl=Decimal("0.00"),
        unrealised_pnl=Decimal("0.00"),
        charges=Decimal("20.00"),
    )
    trips = []
    real = engine._second_reads
    monkeypatch.setattr(engine, "_second_reads", lambda at: trips.append(at) or real(at))

    async def second(n: int) -> Decimal:
        _, pnl = await engine._the_seconds_reads(now + dt.timedelta(seconds=n))
        assert pnl == await sync_to_async(daily_net_pnl)(engine.account, now)
        return pnl

    assert await second(1) == Decimal("-20.00") and len(trips) == 1
    await sync_to_async(engine._mark_positions)()  # no quote yet: nothing to write, the figure holds
    assert await second(2) == Decimal("-20.00") and len(trips) == 1

    def mark(price: str):
        with writes.marking():
            Position.objects.filter(pk=position.pk).update(
                last_price=Decimal(price), unrealised_pnl=(Decimal(price) - 100) * option.lot_size
            )

    await sync_to_async(mark)("101.00")  # a mark the engine did not carry
    assert await second(3) == option.lot_size - 20 and len(trips) == 2
    await sync_to_async(Position.objects.filter(pk=position.pk).update)(charges=Decimal("25.00"))
    assert await second(4) == option.lot_size - 25 and len(trips) == 3
    await sync_to_async(engine._mark_positions)()  # the rows read before that write are not summed
    assert await second(5) == option.lot_size - 25 and len(trips) == 3
    await Trade.objects.acreate(
        account="default",
        instrument=option,
        strategy=strategy,
        direction=Trade.Direction.LONG,
        quantity=option.lot_size,
        entry_price=Decimal("90"),
        exit_price=Decimal("95"),
        gross_pnl=Decimal("95.50"),
        charges=Decimal("20.00"),
        net_pnl=Decimal("75.50"),
        opened_at=now,
        closed_at=now,
    )
    assert await second(6) == option.lot_size - 25 + Decimal("75.50") and len(trips) == 4


@pytest.mark.django_db(transaction=True)
async def test_a_configuration_window_ending_between_the_check_and_the_use_reads_nothing_on_the_event_loop(
    enabled, monkeypatch
):
    """The second's reads decide on the event loop that nothing is due; the wall-clock
    window may end a moment later. The limits held are used as they are, and nothing
    is read there (a read on the event loop stops the engine)."""
    from asgiref.sync import sync_to_async

    from trading.engine import config

    engine, _ = await sync_to_async(sim_engine)(dt.time(10, 0), dt.time(10, 5))
    await sync_to_async(engine._load)()
    engine._config_seen = (config.generation(), float("inf"))
    now = dt.datetime.combine(DAY, dt.time(10, 0), tzinfo=IST)
    assert await engine._the_seconds_reads(now) == ([], Decimal("0.00"))  # read: kept
    answers = iter([False])  # not due when asked, due for anyone asking again
    monkeypatch.setattr(engine, "_config_due", lambda: next(answers, True))
    engine._limits_fresh = False
    assert await engine._the_seconds_reads(now + dt.timedelta(seconds=1)) == ([], Decimal("0.00"))
    assert engine._limits_fresh
