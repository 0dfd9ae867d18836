from __future__ import annotations

import datetime as dt

import pytest

from quanthub.clock import IST
from risk.breakers import VixMonitor, clear, next_session_open, trip
from risk.models import BreakerTrip, TradingState
from risk.services import get_trading_state

T0 = dt.datetime(2026, 11, 24, 9, 15, tzinfo=IST)


PREVIOUS = T0 - dt.timedelta(days=1)


def _seeded(**kwargs) -> VixMonitor:
    """A monitor seeded from a previous session whose 60-second changes are exactly
    ±0.03 (alternating minutes up and down, one tick a second): mean 0, σ ≈ 0.03."""
    monitor = VixMonitor(sigma=3.0, normalise_minutes=15, **kwargs)
    ticks = []
    vix = 13.0
    for second in range(3 * 3600):
        vix += 0.0005 if (second // 60) % 2 == 0 else -0.0005
        ticks.append((PREVIOUS + dt.timedelta(seconds=second), round(vix, 6)))
    assert monitor.seed(ticks) > 10_000
    return monitor


def _threshold(monitor: VixMonitor) -> float:
    return monitor.mean + monitor.sigma * monitor.std


def test_it_is_seeded_from_the_previous_session_and_judges_from_the_first_minute():
    monitor = _seeded()
    assert 0.015 < monitor.std < 0.035 and abs(monitor.mean) < 1e-3
    # 09:15:00 and, five seconds later, a spike: within 5 s of the open, no warm-up.
    assert monitor.observe(T0, 13.0) is None
    assert monitor.observe(T0 + dt.timedelta(seconds=5), 13.0 + 1.0) == "trip"


@pytest.mark.parametrize(("above", "trips"), [(-1e-6, False), (0.0, False), (1e-6, True)])
def test_the_trip_is_at_exactly_sigma_times_the_std_of_60_second_changes(above, trips):
    monitor = _seeded()
    start = T0 + dt.timedelta(minutes=30)
    for second in range(61):  # a flat minute: VIX as it stood 60 s ago is 13.0
        assert monitor.observe(start + dt.timedelta(seconds=second), 13.0) is None
    threshold = _threshold(monitor)  # the tick is judged before it joins the distribution
    verdict = monitor.observe(start + dt.timedelta(seconds=61), 13.0 + threshold + above)
    assert (verdict == "trip") is trips


def test_a_spike_trips_on_its_first_tick_and_clears_after_calm():
    monitor = _seeded()
    at = T0 + dt.timedelta(minutes=10)
    for second in range(120):
        monitor.observe(at + dt.timedelta(seconds=second), 13.0)
    spike = at + dt.timedelta(seconds=120)
    assert monitor.observe(spike, 14.0) == "trip"  # 0 s after the spike's first tick
    events = [monitor.observe(spike + dt.timedelta(seconds=s), 14.0) for s in range(1, 20 * 60)]
    assert "clear" in events
    cleared = events.index("clear") + 1
    assert 15 * 60 <= cleared <= 17 * 60  # calm for vix_normalise_minutes after the window passed


def test_a_fall_never_trips_and_without_enough_samples_nothing_trips():
    monitor = _seeded()
    monitor.observe(T0, 13.0)
    assert monitor.observe(T0 + dt.timedelta(seconds=5), 11.0) is None
    unseeded = VixMonitor(min_samples=300)
    assert unseeded.observe(T0, 13.0) is None
    assert unseeded.observe(T0 + dt.timedelta(seconds=5), 20.0) is None


def test_calm_noise_alone_never_trips():
    monitor = _seeded()
    vix = 13.0
    for second in range(2 * 3600):
        vix += 0.0005 if (second // 60) % 2 == 0 else -0.0005
        assert monitor.observe(T0 + dt.timedelta(seconds=second), vix) is None


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
