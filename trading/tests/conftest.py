from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from marketdata.book import Quote, QuoteBook
from marketdata.models import Instrument
from quanthub.clock import IST, SimulatedClock
from trading.brokers.paper import PaperBroker
from trading.brokers.ratelimit import RateLimiter
from trading.orders.manager import OrderManager

T0 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=IST)


@pytest.fixture
def clock():
    return SimulatedClock(T0)


@pytest.fixture
def book():
    return QuoteBook()


@pytest.fixture
def option(demo_market):
    return (
        Instrument.objects.select_related("underlying")
        .filter(underlying__symbol="NIFTY", kind="CE", is_active=True)
        .order_by("expiry", "strike")[30]
    )


@pytest.fixture
def future(demo_market):
    return Instrument.objects.select_related("underlying").get(underlying__symbol="NIFTY", kind="FUT", is_active=True)


def quote(book, clock, instrument, bid, ask, bid_qty=650, ask_qty=650):
    book.set(Quote(instrument.security_id, float(bid), float(ask), bid_qty, ask_qty, float(bid), clock.now()))
    underlying = instrument.underlying
    if underlying.security_id not in book:
        book.set(Quote(underlying.security_id, 24499.95, 24500.05, 10_000, 10_000, 24500.0, clock.now()))


@pytest.fixture
def paper(clock, book):
    return PaperBroker(clock=clock, book=book, capital=Decimal("1000000"))


@pytest.fixture
def oms(paper, clock, book):
    return OrderManager(paper, RateLimiter(rate=1000), clock=clock, book=book)
