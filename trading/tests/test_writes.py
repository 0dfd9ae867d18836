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
from trading.models import Order, Position, Strategy

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
