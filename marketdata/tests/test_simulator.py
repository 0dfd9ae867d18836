from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketdata.feeds.base import ChainSnapshot, LtpTick
from marketdata.feeds.simulator import SimulatorFeed
from marketdata.scenarios import Scenario, ScenarioError
from quanthub.clock import IST, SimulatedClock

DAY = dt.date(2026, 11, 23)


def _feed(seed=7, minutes=6, scenario="default", **kw):
    return SimulatorFeed(
        seed=seed,
        scenario=scenario,
        trading_day=DAY,
        end_time=(dt.datetime(2026, 1, 1, 9, 15) + dt.timedelta(minutes=minutes)).time(),
        **kw,
    )


def _chains(feed):
    return [item for item in feed.run_sync() if isinstance(item, ChainSnapshot)]


def test_it_is_deterministic_for_a_seed():
    first, second = _chains(_feed(seed=11)), _chains(_feed(seed=11))
    assert len(first) == len(second) > 0
    for a, b in zip(first, second, strict=True):
        assert a.exchange_time == b.exchange_time
        np.testing.assert_array_equal(a.security_id, b.security_id)
        np.testing.assert_array_equal(a.bid, b.bid)
        np.testing.assert_array_equal(a.volume, b.volume)
    other = _chains(_feed(seed=12))
    assert not np.array_equal(first[-1].bid, other[-1].bid)


def test_it_emits_a_chain_every_3_s_and_ltp_every_second():
    items = list(_feed(minutes=1, scenario=None).run_sync())
    chains = [i for i in items if isinstance(i, ChainSnapshot) and i.underlying == "NIFTY"]
    index_ticks = [i for i in items if isinstance(i, LtpTick) and i.kind == "INDEX" and i.symbol == "NIFTY"]
    assert [c.exchange_time.second for c in chains[:4]] == [0, 3, 6, 9]
    assert len(index_ticks) == 61 and len(chains) == 21
    kinds = {(i.symbol, i.kind) for i in items if isinstance(i, LtpTick)}
    assert ("INDIAVIX", "VIX") in kinds and ("NIFTY-FUT", "FUT") in kinds
    seqs = [i.seq for i in items]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_prices_sit_on_the_tick_with_positive_spreads_that_widen_away_from_atm():
    chain = _chains(_feed(minutes=1, scenario=None))[-1]
    for prices in (chain.bid, chain.ask, chain.last_price):
        np.testing.assert_allclose(np.round(prices / 0.05) * 0.05, prices, atol=1e-9)
    assert (chain.ask > chain.bid).all() and (chain.bid > 0).all()
    spread = chain.ask - chain.bid
    atm = np.argmin(np.abs(chain.strike - chain.underlying_ltp))
    assert spread[atm] <= np.max(spread)
    assert (chain.bid_qty > 0).all() and (chain.ask_qty > 0).all()
    assert len(chain) == 42  # ±10 strikes around ATM, CE and PE


def test_call_prices_fall_and_put_prices_rise_with_the_strike():
    chain = _chains(_feed(minutes=1, scenario=None))[-1]
    calls = chain.option_type == 0
    assert (np.diff(chain.ask[calls]) <= 0.0501).all()
    assert (np.diff(chain.ask[~calls]) >= -0.0501).all()


def test_informed_flow_bursts_volume_jumps_the_price_and_builds_oi():
    feed = _feed(minutes=5)
    chains = [c for c in _chains(feed) if c.underlying == "NIFTY"]
    event = next(e for e in feed.injected if e.type == "informed_flow" and e.underlying == "NIFTY")
    assert event.at == dt.datetime(2026, 11, 23, 9, 16, 30, tzinfo=IST)
    by_time = {c.exchange_time: c for c in chains}
    before, at = by_time[event.at - dt.timedelta(seconds=3)], by_time[event.at]
    row_before = np.flatnonzero(before.security_id == event.security_id)[0]
    row_at = np.flatnonzero(at.security_id == event.security_id)[0]
    burst = at.volume[row_at] - before.volume[row_before]
    normal = np.diff(
        np.array(
            [
                c.volume[np.flatnonzero(c.security_id == event.security_id)[0]]
                for c in chains
                if c.exchange_time < event.at
            ]
        )
    )
    assert burst > 20 * normal.mean()
    mid_before = (before.bid[row_before] + before.ask[row_before]) / 2
    mid_at = (at.bid[row_at] + at.ask[row_at]) / 2
    assert mid_at / mid_before - 1 > 0.0015
    later = by_time[event.at + dt.timedelta(seconds=120)]
    row_later = np.flatnonzero(later.security_id == event.security_id)[0]
    assert later.oi[row_later] - at.oi[row_at] > 0


def test_bad_ticks_are_injected_as_scripted():
    scenario = {
        "events": [
            {"time": "09:15:30", "type": "bad_ticks", "underlying": "NIFTY", "kind": "crossed", "count": 2},
            {"time": "09:15:45", "type": "bad_ticks", "underlying": "NIFTY", "kind": "missing", "count": 1},
            {"time": "09:16:00", "type": "bad_ticks", "underlying": "NIFTY", "kind": "stale"},
        ]
    }
    chains = {
        c.exchange_time.time() if c.exchange_time.second % 3 == 0 else c.received_at.time(): c
        for c in _chains(_feed(minutes=2, scenario=scenario))
        if c.underlying == "NIFTY"
    }
    crossed = chains[dt.time(9, 15, 30)]
    assert int((crossed.bid > crossed.ask).sum()) == 2
    assert len(chains[dt.time(9, 15, 45)]) == 40
    stale = next(c for c in chains.values() if c.received_at.time() == dt.time(9, 16))
    assert (stale.received_at - stale.exchange_time).total_seconds() == 20


def test_a_feed_gap_emits_nothing_for_its_duration():
    scenario = {"events": [{"time": "09:15:20", "type": "feed_gap", "seconds": 9}]}
    times = {i.received_at for i in _feed(minutes=1, scenario=scenario).run_sync()}
    gap = [dt.datetime(2026, 11, 23, 9, 15, s, tzinfo=IST) for s in range(20, 29)]
    assert not times.intersection(gap)
    assert dt.datetime(2026, 11, 23, 9, 15, 29, tzinfo=IST) in times


def test_a_vix_spike_lifts_india_vix():
    scenario = {"events": [{"time": "09:15:30", "type": "vix_spike", "points": 5}]}
    vix = [i.ltp for i in _feed(minutes=1, scenario=scenario).run_sync() if isinstance(i, LtpTick) and i.kind == "VIX"]
    assert vix[31] - vix[29] > 4


async def test_the_async_stream_advances_a_simulated_clock():
    clock = SimulatedClock(dt.datetime(2026, 11, 23, 9, 0, tzinfo=IST))
    feed = SimulatorFeed(clock=clock, seed=3, trading_day=DAY, end_time=dt.time(9, 15, 10))
    count = 0
    async for item in feed:
        assert clock.now() == item.received_at
        count += 1
    assert clock.now() == dt.datetime(2026, 11, 23, 9, 15, 10, tzinfo=IST)
    assert count > 30


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ({"events": [{"time": "09:20", "type": "meteor"}]}, "type must be one of"),
        ({"events": [{"time": "9h20", "type": "feed_gap"}]}, "time must be HH:MM"),
        ({"events": [{"time": "09:20", "type": "bad_ticks", "kind": "weird"}]}, "bad_ticks kind must be one of"),
        ({"events": "soon"}, "'events' must be a list"),
    ],
)
def test_a_bad_scenario_is_refused_clearly(scenario, message):
    with pytest.raises(ScenarioError, match=message):
        Scenario.load(scenario)


def test_a_bad_speed_or_underlying_is_refused():
    with pytest.raises(ValueError, match="speed must be"):
        SimulatorFeed(speed=0, trading_day=DAY)
    with pytest.raises(ValueError, match="no underlying FINNIFTY"):
        SimulatorFeed(underlyings=("FINNIFTY",), trading_day=DAY)


# --- resuming a session after a restart -------------------------------------------------


def _resume_items(items):
    return [
        (
            type(i).__name__,
            i.security_id if hasattr(i, "security_id") and isinstance(i.security_id, str) else "",
            i.received_at,
            getattr(i, "ltp", None) or getattr(i, "underlying_ltp", None),
        )
        for i in items
    ]


def test_a_restart_resumes_the_market_where_it_stood_and_replays_no_earlier_event():
    import datetime as _dt

    from marketdata.feeds.simulator import SimulatorFeed
    from quanthub.clock import IST

    day = _dt.date(2026, 11, 23)
    scenario = {
        "events": [
            {"time": "09:16:30", "type": "vix_spike", "points": 5},
            {"time": "09:17:00", "type": "informed_flow", "underlying": "NIFTY", "follow_through_pct": 40},
        ]
    }
    first = SimulatorFeed(seed=3, trading_day=day, scenario=scenario, end_time=_dt.time(9, 20))
    cut = _dt.datetime.combine(day, _dt.time(9, 18), tzinfo=IST)
    before, after, state = [], [], None
    # Each second's items (the one-second quotes come half a second after it) belong to that second.
    done = cut + _dt.timedelta(seconds=1)
    for item in first.run_sync():
        (before if item.received_at < done else after).append(item)
        if item.received_at < done:
            state = first.get_state()
    # A plain restart with the stored state, and one without any: both carry on with the same market.
    for saved in (state, None):
        resumed = SimulatorFeed(seed=3, trading_day=day, scenario=scenario, end_time=_dt.time(9, 20))
        start = resumed.resume(cut + _dt.timedelta(seconds=1), saved)
        assert start == cut + _dt.timedelta(seconds=1)
        items = list(resumed.run_sync())
        assert _resume_items(items) == _resume_items(after)
        assert not [e for e in resumed.injected if e.at > cut]  # the 09:16:30 spike does not fire again
    # A state older than the resume time is brought forward silently, never replayed.
    older = SimulatorFeed(seed=3, trading_day=day, scenario=scenario, end_time=_dt.time(9, 20))
    older.resume(cut + _dt.timedelta(seconds=61), state)
    assert next(iter(older.run_sync())).received_at == cut + _dt.timedelta(seconds=61)


@pytest.mark.parametrize("underlyings", [("NIFTY", "BANKNIFTY"), ("BANKNIFTY",)])
def test_the_vix_path_is_the_second_by_second_step_exactly(underlyings):
    """The fast VIX path (what seeds every backtest day's VIX breaker) gives the values,
    and leaves the market, exactly as stepping the simulator one second at a time."""
    scenario = {"events": [{"time": "09:20", "type": "vix_spike", "points": 4, "decay_minutes": 3}]}
    fast, slow = (_feed(seed=11, minutes=12, scenario=scenario, underlyings=underlyings) for _ in range(2))
    events = [e for e in slow.scenario.events if e.type == "vix_spike"]
    expected, second = [], slow.start
    while second <= slow.end:
        while events and dt.datetime.combine(DAY, events[0].at, tzinfo=IST) <= second:
            slow._apply(events.pop(0), second)
        slow._step(second)
        expected.append((second, round(slow.vix + slow._vix_extra, 2)))
        second += dt.timedelta(seconds=1)
    path = fast.vix_path()
    assert path == expected and len(path) == 12 * 60 + 1
    assert max(v for _, v in path) - path[0][1] > 3  # the spike is in it
    assert (fast.vix, fast._vix_extra) == (slow.vix, slow._vix_extra)
    for a, b in zip(fast.markets.values(), slow.markets.values(), strict=True):
        assert (a.spot, a.realised_var, a.last_return, a.rng.random()) == (
            b.spot,
            b.realised_var,
            b.last_return,
            b.rng.random(),
        )


def test_the_previous_session_is_the_calm_day_before_on_its_own_seed_and_each_caller_gets_its_own_copy():
    feed = _feed(seed=12)  # Monday 23 November: the session before is Friday's
    friday = SimulatorFeed(seed=12 + 1_000_003, trading_day=dt.date(2026, 11, 20)).vix_path()
    first = feed.previous_session_vix()
    assert first == friday and first[0][0] == dt.datetime(2026, 11, 20, 9, 15, tzinfo=IST)
    first.clear()
    assert _feed(seed=12).previous_session_vix() == friday  # a grid's next task of the day: the same path


@given(value=st.floats(0.0, 200_000.0), tick=st.sampled_from([0.05, 0.1, 0.2, 0.5, 1.0]))
def test_one_price_rounds_to_its_tick_as_an_array_of_them_does(value, tick):
    from marketdata.feeds.simulator import _round_tick, _round_tick_one

    assert _round_tick_one(value, tick) == float(_round_tick(np.array([value]), tick)[0])
