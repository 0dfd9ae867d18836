"""A plain restart of the simulator on the same day resumes where the market
stood; the engine's clock never runs back behind its heartbeats, orders or fills."""

from __future__ import annotations

import datetime as dt

import pytest

from marketdata.demo import ensure_demo_instruments
from marketdata.feeds.base import LtpTick
from marketdata.feeds.simulator import SimulatorFeed
from quanthub.clock import IST
from trading.management.commands.run_engine import Command, _claim
from trading.models import EngineHeartbeat

pytestmark = pytest.mark.django_db
DAY = dt.date(2026, 11, 23)


def _plan(**extra):
    return {"broker": "paper", "feed": "sim", "speed": "max", "day": DAY, "scenario": "default", "seed": 7, **extra}


def _stored_session(until: dt.time) -> dt.datetime:
    feed = SimulatorFeed(seed=7, scenario="default", trading_day=DAY, end_time=until)
    for _ in feed.run_sync():
        pass
    at = dt.datetime.combine(DAY, until, tzinfo=IST)
    EngineHeartbeat.objects.create(
        engine_id="dead-engine",
        role=EngineHeartbeat.Role.ACTIVE,
        started_at=at,
        beat_at=at,
        market_time=at,
        feed_state=feed.get_state(),
    )
    return at


def test_a_plain_restart_resumes_at_the_last_stored_market_time_with_the_market_as_it_stood():
    ensure_demo_instruments(DAY)
    at = _stored_session(dt.time(9, 20))
    reached, state = _claim("default", "new-engine")
    engine = Command()._build(_plan(), reached, state)
    assert engine.feed.start == at + dt.timedelta(seconds=1)
    assert engine.clock.now() == at
    # The same market as an uninterrupted run: the first index tick matches.
    fresh = SimulatorFeed(seed=7, scenario="default", trading_day=DAY, end_time=dt.time(9, 21))
    expected = next(i for i in fresh.run_sync() if i.received_at > at and isinstance(i, LtpTick))
    resumed = next(i for i in engine.feed.run_sync() if isinstance(i, LtpTick))
    assert (resumed.received_at, resumed.ltp) == (expected.received_at, expected.ltp)
    assert EngineHeartbeat.objects.get(engine_id="dead-engine").role == EngineHeartbeat.Role.STOPPED


def test_the_clock_never_runs_back_behind_the_book_and_wall_clock_orders_do_not_count(option):
    from trading.models import Order

    at = _stored_session(dt.time(9, 20))
    later = at + dt.timedelta(seconds=40)  # the killed engine traded past its last heartbeat
    Order.objects.create(
        client_order_id="QHLATER", instrument=option, side="BUY", quantity=65, intent_at=later, committed_at=later
    )
    Order.objects.create(  # a dashboard exit, on the wall clock of another day
        client_order_id="QHWEB",
        instrument=option,
        side="SELL",
        quantity=65,
        intent_at=dt.datetime(2026, 12, 1, 12, tzinfo=IST),
    )
    reached, state = _claim("default", "new-engine")
    engine = Command()._build(_plan(), reached, state)
    assert engine.clock.now() == later
    assert engine.feed.start == later + dt.timedelta(seconds=1)


def test_from_open_starts_the_day_over():
    ensure_demo_instruments(DAY)
    _stored_session(dt.time(9, 20))
    reached, state = _claim("default", "new-engine")
    engine = Command()._build(_plan(from_open=True), reached, state)
    assert engine.feed.start == dt.datetime.combine(DAY, dt.time(9, 15), tzinfo=IST)
