"""Fixtures and helpers shared by the tests of the trading app (and, through
``risk/tests/conftest.py`` and imports, of risk and the API): the one place test
helpers live, so no test module imports another."""

from __future__ import annotations

import datetime as dt
import io
import logging
from decimal import Decimal

import numpy as np
import pytest
from asgiref.sync import sync_to_async

from marketdata.book import Quote, QuoteBook
from marketdata.feeds.base import ChainSnapshot
from marketdata.models import Instrument
from marketdata.storage import SnapshotWriter
from quanthub.clock import IST, SimulatedClock
from quanthub.logging import JsonFormatter
from trading.brokers.paper import PaperBroker
from trading.brokers.ratelimit import RateLimiter
from trading.models import Order
from trading.orders.manager import OrderManager

# The test account's Dhan credentials: made up, in Dhan's shapes (a 6-digit PIN, a
# base32 TOTP seed, a 10-digit client id). The secrets tests look for each in every output.
DHAN_PIN = "482913"
DHAN_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
DHAN_CLIENT = "1000000001"
DHAN_API = "https://api.dhan.co/v2"
DHAN_AUTH = "https://auth.dhan.co"

T0 = dt.datetime(2026, 11, 24, 10, 0, tzinfo=IST)
DAY = dt.date(2026, 11, 23)  # the simulated session the engine tests trade


def sim_engine(start: dt.time, end: dt.time, clock=None):
    """An engine on the simulator (seed 7) and the paper broker, from ``start`` to ``end`` of DAY."""
    from marketdata.feeds.simulator import SimulatorFeed
    from trading.engine.engine import Engine

    clock = clock or SimulatedClock(dt.datetime.combine(DAY, start, tzinfo=IST) - dt.timedelta(seconds=1))
    book = QuoteBook()
    feed = SimulatorFeed(clock=clock, seed=7, scenario="default", trading_day=DAY, start_time=start, end_time=end)
    broker = PaperBroker(clock=clock, book=book)
    return Engine(feed=feed, broker=broker, clock=clock, book=book, writer=SnapshotWriter()), clock


@pytest.fixture
def enabled(db):
    """The demo master for DAY with the vol_oi strategy enabled."""
    from marketdata.demo import ensure_demo_instruments
    from trading.models import Strategy

    ensure_demo_instruments(DAY)
    Strategy.objects.filter(key="vol_oi").update(enabled=True)


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


def quotes_for(instruments, book, now):
    """Quotes in the live book, and stored as the engine would have stored them
    (a standalone flatten prices from the stored ones)."""
    writer = SnapshotWriter()
    for i, inst in enumerate(instruments):
        tick = float(inst.tick_size)
        bid = 100.0 + i if inst.kind != "FUT" else round(24510.0 + 20 * i, 2)
        ask = round(bid + tick, 2)
        book.set(Quote(inst.security_id, bid, ask, 100_000, 100_000, bid, now))
        zero = np.zeros(1)
        writer.add_chain(
            ChainSnapshot(
                inst.underlying.symbol,
                inst.expiry,
                now,
                now + dt.timedelta(microseconds=i),
                24500.0,
                np.array([inst.security_id]),
                np.array([float(inst.strike or 0)]),
                np.array([0], dtype=np.int8),
                np.array([bid]),
                np.array([1], dtype=np.int64),
                np.array([1], dtype=np.int64),
                np.array([1], dtype=np.int64),
                np.array([bid]),
                np.array([ask]),
                np.array([100_000]),
                np.array([100_000]),
                zero,
                zero,
                zero,
                zero,
                zero,
            )
        )
    for sid in ("13", "25"):
        book.set(Quote(sid, 24499.95, 24500.05, 10**6, 10**6, 24500.0, now))
    writer.flush()


async def buy_two_lots(oms, book, instruments) -> None:
    """Two lots of each instrument at the ask, through the real OMS (filled at once by the paper broker)."""
    for inst in instruments:
        order = await oms.submit(
            instrument=inst,
            side="BUY",
            quantity=inst.lot_size * 2,
            limit_price=Decimal(str(book.get(inst.security_id).ask)),
            check_slippage_rule=False,
        )
        assert order.state == Order.State.FILLED, (order.reject_code, order.reason)


async def open_legs(oms, book, count, *, futures: bool = False):
    """``count`` open legs (two lots each) of options, or of options and both futures."""
    now = oms.clock.now()

    def pick():
        legs = list(
            Instrument.objects.select_related("underlying")
            .filter(kind__in=["CE", "PE"], is_active=True)
            .order_by("underlying__symbol", "strike", "kind")[: count - (2 if futures else 0)]
        )
        if futures:
            legs += list(Instrument.objects.select_related("underlying").filter(kind="FUT", is_active=True)[:2])
        return legs

    instruments = await sync_to_async(pick)()
    await sync_to_async(quotes_for)(instruments, book, now)
    await buy_two_lots(oms, book, instruments)
    return instruments


def use_dhan_credentials(settings, tmp_path, token: str) -> None:
    """The live broker's settings for the test account, with ``token`` as its access token
    and its token file under ``tmp_path``."""
    settings.DHAN_CLIENT_ID = DHAN_CLIENT
    settings.DHAN_ACCESS_TOKEN = token
    settings.DHAN_PIN = DHAN_PIN
    settings.DHAN_TOTP_SECRET = DHAN_TOTP_SECRET
    settings.DHAN_TOKEN_PATH = str(tmp_path / "token")
    settings.DHAN_API_BASE_URL = DHAN_API
    settings.DHAN_AUTH_BASE_URL = DHAN_AUTH


@pytest.fixture
def json_log():
    """Every log line of the process, at DEBUG, through our JSON formatter: what an
    operator's log would hold."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)
