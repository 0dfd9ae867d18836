from __future__ import annotations

import datetime as dt

from marketdata.book import QuoteBook
from marketdata.feeds.base import ChainSnapshot
from marketdata.feeds.simulator import SimulatorFeed
from quanthub.clock import IST, SimulatedClock

DAY = dt.date(2026, 11, 23)


def _snapshot() -> ChainSnapshot:
    clock = SimulatedClock(dt.datetime.combine(DAY, dt.time(9, 15), tzinfo=IST))
    feed = SimulatorFeed(clock=clock, seed=7, trading_day=DAY, end_time=dt.time(9, 15, 5))
    return next(item for item in feed.run_sync() if isinstance(item, ChainSnapshot))


def test_it_books_every_good_row_of_a_chain_and_skips_flagged_ones():
    snapshot = _snapshot()
    snapshot.flags[:] = 0
    snapshot.flags[3] = 1
    book = QuoteBook()
    book.update_chain(snapshot)
    bad = str(snapshot.security_id[3])
    assert bad not in book
    for i in (0, 1, len(snapshot) - 1):
        quote = book.get(str(snapshot.security_id[i]))
        assert quote is not None and quote.at == snapshot.exchange_time
        assert (quote.bid, quote.ask, quote.last) == (
            float(snapshot.bid[i]),
            float(snapshot.ask[i]),
            float(snapshot.last_price[i]),
        )
        assert (quote.bid_qty, quote.ask_qty) == (int(snapshot.bid_qty[i]), int(snapshot.ask_qty[i]))
        assert type(quote.bid) is float and type(quote.bid_qty) is int and type(quote.security_id) is str


def test_a_booked_quote_is_the_same_immutable_quote_its_constructor_makes():
    import dataclasses

    import pytest

    from marketdata.book import Quote

    snapshot = _snapshot()
    snapshot.flags[:] = 0
    book = QuoteBook()
    book.update_chain(snapshot)
    i = 0
    sid = str(snapshot.security_id[i])
    quote = book.get(sid)
    assert type(quote) is Quote
    expected = Quote(
        sid,
        float(snapshot.bid[i]),
        float(snapshot.ask[i]),
        int(snapshot.bid_qty[i]),
        int(snapshot.ask_qty[i]),
        float(snapshot.last_price[i]),
        snapshot.exchange_time,
    )
    assert quote == expected and hash(quote) == hash(expected) and repr(quote) == repr(expected)
    with pytest.raises(dataclasses.FrozenInstanceError):
        quote.bid = 1.0
