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
