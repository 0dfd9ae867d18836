from __future__ import annotations

import datetime as dt

import pytest

from quanthub.clock import IST
from risk.breakers import VixMonitor, clear, next_session_open, trip
from risk.models import BreakerTrip, TradingState
from risk.services import get_trading_state

T0 = dt.datetime(2026, 11, 24, 9, 15, tzinfo=IST)


def _calm_day(monitor, minutes=30):
    vix = 13.0
    for i in range(minutes):
        vix += 0.02 if i % 2 else -0.02
        monitor.observe(T0 + dt.timedelta(minutes=i), vix)
    return vix


def test_a_vix_jump_beyond_three_sigma_trips_and_clears_after_calm():
    monitor = VixMonitor(sigma=3.0, normalise_minutes=15)
    vix = _calm_day(monitor)
    assert monitor.observe(T0 + dt.timedelta(minutes=30), vix + 2.0) == "trip"
    events = [
        monitor.observe(T0 + dt.timedelta(minutes=31 + i), vix + 2.0 + (0.01 if i % 2 else -0.01)) for i in range(20)
    ]
    assert "clear" in events and events.index("clear") >= 14


def test_noise_alone_never_trips():
    monitor = VixMonitor()
    assert all(monitor.observe(T0 + dt.timedelta(minutes=i), 13 + 0.05 * ((i * 7) % 5 - 2)) is None for i in range(300))


@pytest.mark.django_db
def test_a_trip_switches_to_reducing_and_clearing_restores_active():
    trip("vix", "India VIX +2.0 in a minute (> 3σ)", at=T0)
    assert get_trading_state().state == TradingState.State.REDUCING
    assert BreakerTrip.objects.get().is_open
    clear("vix", at=T0 + dt.timedelta(minutes=20))
    assert get_trading_state().state == TradingState.State.ACTIVE


def test_the_next_session_skips_the_weekend():
    friday = dt.datetime(2026, 11, 27, 14, 0, tzinfo=IST)
    assert next_session_open(friday) == dt.datetime(2026, 11, 30, 9, 15, tzinfo=IST)
