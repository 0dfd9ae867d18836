from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from risk.models import TradingState
from trading.brokers.base import OrderType, PlaceRequest, Side, Unavailable
from trading.brokers.paper import PaperBroker
from trading.conftest import quote
from trading.models import Order, ReconciliationBreak
from trading.orders.reconcile import adopt_external_order, reconcile, resolve_break

pytestmark = pytest.mark.django_db(transaction=True)
K = ReconciliationBreak.Kind


async def _state():
    return (await TradingState.objects.aget(account="default")).state


async def test_agreeing_books_give_no_breaks(oms, paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    await oms.submit(instrument=option, side="BUY", quantity=option.lot_size, limit_price=Decimal("100.00"))
    result = await reconcile(paper, clock=clock)
    assert result.clean


async def test_an_order_placed_outside_is_a_break_that_halts_until_adopted(
    oms, paper, book, clock, option, risk_manager
):
    quote(book, clock, option, "99.95", "100.00")
    await paper.place_order(
        PlaceRequest(
            "MANUAL1",
            option.security_id,
            option.exchange_segment,
            Side.BUY,
            option.lot_size,
            OrderType.LIMIT,
            Decimal("99.00"),
        )
    )
    result = await reconcile(paper, clock=clock)
    assert [b.kind for b in result.breaks] == [K.EXTRA_AT_BROKER]
    assert result.breaks[0].broker["correlation_id"] == "MANUAL1"
    assert await _state() == TradingState.State.HALTED
    order = await sync_to_async(adopt_external_order)(result.breaks[0], actor=risk_manager.username)
    assert order.purpose == Order.Purpose.EXTERNAL
    assert (await reconcile(paper, clock=clock)).clean


async def test_a_position_difference_is_recorded_with_both_sides(oms, paper, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    await oms.submit(instrument=option, side="BUY", quantity=option.lot_size, limit_price=Decimal("100.00"))
    from trading.models import Position

    await Position.objects.filter(instrument=option).aupdate(net_quantity=0)
    result = await reconcile(paper, clock=clock)
    breaks = {b.kind: b for b in result.breaks}
    assert breaks[K.POSITION_MISMATCH].ours == {"net_quantity": 0}
    assert breaks[K.POSITION_MISMATCH].broker == {"net_quantity": option.lot_size}
    await sync_to_async(resolve_break)(breaks[K.POSITION_MISMATCH], actor="risk1", resolution="booked by hand")
    assert not await ReconciliationBreak.objects.filter(resolved_at__isnull=True, kind=K.POSITION_MISMATCH).aexists()


async def test_a_missing_position_report_is_not_flat(paper, clock):
    class NoReport:
        async def order_book(self):
            return []

        async def trade_book(self):
            return []

        async def positions(self):
            raise Unavailable("positions endpoint timed out")

    result = await reconcile(NoReport(), clock=clock)
    assert [b.kind for b in result.breaks] == [K.NO_POSITION_REPORT]
    assert await _state() == TradingState.State.HALTED


async def test_repeated_runs_do_not_duplicate_breaks(paper, clock):
    class NoReport:
        async def order_book(self):
            return []

        async def trade_book(self):
            return []

        async def positions(self):
            raise Unavailable("down")

    await reconcile(NoReport(), clock=clock)
    await reconcile(NoReport(), clock=clock)
    assert await ReconciliationBreak.objects.acount() == 1


def _outside_order(paper, option, cid: str):
    return paper.place_order(
        PlaceRequest(
            cid,
            option.security_id,
            option.exchange_segment,
            Side.BUY,
            option.lot_size,
            OrderType.LIMIT,
            Decimal("95.00"),
        )
    )


async def test_a_clean_run_repeats_only_while_nothing_it_reads_was_written(
    oms, paper, book, clock, option, monkeypatch
):
    """``LastClean``: a repeat on the same inputs would find the same, and every write to
    what a reconciliation reads (our books, the paper broker's) makes it run again and
    find the change; a position's marks are not among its inputs."""
    from trading import writes
    from trading.models import Position
    from trading.orders.reconcile import LastClean, inputs_version

    writes.watch_all()
    await sync_to_async(writes.watch_all)()  # the database thread's connection, opened before
    quote(book, clock, option, "99.95", "100.00")
    await oms.submit(instrument=option, side="BUY", quantity=option.lot_size, limit_price=Decimal("100.00"))
    kept = LastClean()

    async def run():
        version = inputs_version(paper)
        result = await reconcile(paper, clock=clock)
        kept.ran(version, result)
        return result

    first = await run()
    assert first.clean and kept.holds(inputs_version(paper), clock.now())
    order = await Order.objects.aget(account="default")
    assert first.steady_until == order.created_at + dt.timedelta(days=1)

    # The marks only (the engine's marking): still the same inputs.
    def mark():
        with writes.marking():
            Position.objects.filter(instrument=option).update(last_price=Decimal("101.00"))

    await sync_to_async(mark)()
    assert kept.holds(inputs_version(paper), clock.now())
    # The oldest order leaving the day's window changes what is compared.
    assert not kept.holds(inputs_version(paper), first.steady_until)
    # Another process's write (uncounted here) is seen within the wall-clock window.
    monkeypatch.setattr(writes, "RECHECK_S", 0.0)
    assert not kept.holds(inputs_version(paper), clock.now())
    monkeypatch.setattr(writes, "RECHECK_S", 3600.0)

    # The broker's books written (an order placed outside Quant Hub): run, and found.
    await _outside_order(paper, option, "MANUAL7")
    assert not kept.holds(inputs_version(paper), clock.now())
    found = await run()
    assert [b.kind for b in found.breaks] == [K.EXTRA_AT_BROKER]
    assert not kept.holds(inputs_version(paper), clock.now())  # not clean: every run runs
    await sync_to_async(adopt_external_order)(found.breaks[0], actor="risk1")
    assert (await run()).clean and kept.holds(inputs_version(paper), clock.now())

    # Our position's quantity written: run, and found.
    await Position.objects.filter(instrument=option).aupdate(net_quantity=0)
    assert not kept.holds(inputs_version(paper), clock.now())
    assert [b.kind for b in (await run()).breaks] == [K.POSITION_MISMATCH]


async def test_a_broker_whose_books_are_not_tables_here_is_always_asked(paper, clock, monkeypatch):
    from trading.brokers.chaos import ChaosBroker
    from trading.brokers.dhan import DhanBroker
    from trading.brokers.faults import FaultyBroker
    from trading.orders.reconcile import LastClean, inputs_version

    assert paper.book_tables and inputs_version(paper) is not None
    assert DhanBroker.book_tables is None
    assert FaultyBroker(paper, {}).book_tables is None  # a wrapper may change what the books say
    assert ChaosBroker(paper).book_tables is None
    patched = PaperBroker(clock=clock, book=paper.book)

    async def positions():
        return []

    patched.positions = positions  # a paper broker reporting its books some other way
    assert patched.book_tables is None and inputs_version(patched) is None
    unwatched = PaperBroker(clock=clock, book=paper.book)
    monkeypatch.setattr(PaperBroker, "book_tables", ("trading.PaperAccount",))  # writes there are not counted
    assert inputs_version(unwatched) is None
    kept = LastClean()
    kept.ran(None, await reconcile(paper, clock=clock))
    assert not kept.holds(None, clock.now())
