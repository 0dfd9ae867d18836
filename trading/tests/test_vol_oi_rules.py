"""The Volume-OI plan's rules at their boundaries: just below, at, just above."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketdata.baselines import ChainBaselines
from marketdata.feeds.base import ChainSnapshot
from quanthub.clock import IST
from trading.strategies.base import BookOrder
from trading.strategies.vol_oi.detector import MIN_INDEPENDENT_CHANGES, Pending, VolOiDetector
from trading.strategies.vol_oi.trader import SignalTrade, exit_reason
from trading.tests.test_vol_oi import FUTURE, OPTION, T0, _detection, _fill, _strategy

AT = dt.datetime(2026, 11, 23, 9, 20, tzinfo=IST)


def _trade(cost: str, held: int) -> SignalTrade:
    return SignalTrade("k", "NIFTY", OPTION, 0, AT.isoformat(), held=held, cost=Decimal(cost))


@pytest.mark.parametrize(
    ("mid", "expected"),
    [("140.06", ""), ("140.07", "target +40%"), ("140.08", "target +40%"), ("75.04", ""), ("75.03", "stop -25%")],
)
def test_the_target_and_stop_fire_at_exactly_their_percent_of_the_traded_average(mid, expected):
    # 130 units at 100.05: +40 % is exactly 140.07, −25 % exactly 75.0375.
    trade = _trade("13006.50", 130)
    assert exit_reason(trade, Decimal(mid), AT, take_profit_pct=40.0, stop_loss_pct=25.0, time_stop_s=600) == expected


@given(
    price=st.integers(min_value=100, max_value=200_000).map(lambda p: Decimal(p) * Decimal("0.05")),
    lots=st.integers(min_value=1, max_value=10),
)
def test_exactly_plus_forty_percent_always_fires_and_one_tick_less_never(price, lots):
    held = 65 * lots
    trade = _trade(str(price * held), held)
    target = price * Decimal("1.4")
    assert exit_reason(trade, target, AT, take_profit_pct=40.0, stop_loss_pct=25.0, time_stop_s=600).startswith(
        "target"
    )
    below = target - Decimal("0.0001")
    assert exit_reason(trade, below, AT, take_profit_pct=40.0, stop_loss_pct=25.0, time_stop_s=600) == ""


def test_cost_is_exact_over_many_fills_and_survives_a_restart():
    strategy = _strategy()
    strategy._enter(_detection())
    trade = strategy.active()[0]
    for price in ("100.05", "100.10", "100.15"):
        strategy.on_fill(_fill(trade, "BUY", 65, price, T0))
    assert trade.cost == Decimal("19519.50") and isinstance(trade.cost, Decimal)
    # A restart keeps the timers from the saved state and rebuilds the cost from the book:
    # the three filled entries, exactly.
    restarted = _strategy()
    restarted.set_state(strategy.get_state())
    book = [
        BookOrder(trade.key, OPTION, "NIFTY", "CE", "BUY", "ENTRY", "FILLED", 65, 65, Decimal(price), T0, T0)
        for price in ("100.05", "100.10", "100.15")
    ]
    restarted.rebuild_from_book(book)
    assert restarted.active()[0].cost == Decimal("19519.50")


@pytest.mark.parametrize(("delta", "probe_hedge", "scaled_hedge"), [(0.5, 1, 5), (0.55, 1, 6), (-0.45, 1, 4)])
def test_probe_and_scale_are_hedged_to_within_half_a_futures_lot(delta, probe_hedge, scaled_hedge):
    strategy = _strategy()
    strategy._enter(_detection(delta=delta))
    trade = strategy.active()[0]
    strategy.last_delta[OPTION] = delta
    [hedge] = strategy.on_fill(_fill(trade, "BUY", 130, "100.00", T0))
    assert hedge.lots == probe_hedge and hedge.side == ("SELL" if delta > 0 else "BUY")
    strategy.on_fill(_fill(trade, hedge.side, hedge.quantity, "24500", T0, security_id=FUTURE, purpose="HEDGE"))
    [scale] = strategy._scale(_detection("confirm", at=T0 + dt.timedelta(seconds=60), delta=delta))
    [more] = strategy.on_fill(_fill(trade, "BUY", scale.quantity, "101.00", T0 + dt.timedelta(seconds=61)))
    strategy.on_fill(_fill(trade, more.side, more.quantity, "24500", T0, security_id=FUTURE, purpose="HEDGE"))
    assert trade.held == 650 and abs(trade.hedge_held) == scaled_hedge * 65
    assert abs(delta * trade.held + trade.hedge_held) / 65 <= 0.5


def test_a_cancelled_hedge_is_no_longer_counted_as_coming():
    from trading.strategies.base import OrderUpdate

    strategy = _strategy()
    strategy._enter(_detection())
    trade = strategy.active()[0]
    [hedge] = strategy.on_fill(_fill(trade, "BUY", 130, "100.00", T0))
    assert trade.hedge_pending == -65
    strategy.on_order_update(OrderUpdate("vol_oi", trade.key, FUTURE, "HEDGE", "REJECTED", 0, 65, "no margin"))
    assert trade.hedge_pending == 0
    # The next fill re-hedges all of it: 0.5 × 195 units = 1.5 lots, 2 to the nearest (0.5 left over).
    [again] = strategy.on_fill(_fill(trade, "BUY", 65, "100.00", T0))
    assert again.lots == 2


# --- the detector ---------------------------------------------------------------------


def _chain(at, *, volume, oi, bid, ask, sid="C1", ltp=24500.0):
    n = 1
    return ChainSnapshot(
        underlying="NIFTY",
        expiry=dt.date(2026, 11, 24),
        exchange_time=at,
        received_at=at,
        underlying_ltp=ltp,
        security_id=np.array([sid], dtype="U20"),
        strike=np.array([24500.0]),
        option_type=np.zeros(n, dtype=np.int8),
        last_price=np.array([bid]),
        oi=np.array([oi], dtype=np.int64),
        prev_oi=np.array([oi], dtype=np.int64),
        volume=np.array([volume], dtype=np.int64),
        bid=np.array([bid]),
        ask=np.array([ask]),
        bid_qty=np.array([650], dtype=np.int64),
        ask_qty=np.array([650], dtype=np.int64),
        iv=np.array([13.0]),
        delta=np.array([0.5]),
        gamma=np.array([0.001]),
        theta=np.array([-5.0]),
        vega=np.array([10.0]),
    )


def _warm(baselines: ChainBaselines, until: dt.datetime, oi_step=lambda i: 0):
    at, volume, oi, i = AT, 0, 100_000, 0
    while at < until:
        volume += 650 + (i % 3) * 65
        oi += oi_step(i)
        baselines.update(_chain(at, volume=volume, oi=oi, bid=99.95, ask=100.05))
        at += dt.timedelta(seconds=3)
        i += 1
    return at, volume, oi


@pytest.mark.parametrize(("rise_pct", "jump"), [(0.1499, False), (0.15, True), (0.1501, True), (-0.5, False)])
def test_the_jump_is_measured_over_two_seconds_on_the_one_second_quotes(rise_pct, jump):
    baselines = ChainBaselines()
    at, volume, oi = _warm(baselines, AT + dt.timedelta(minutes=2))
    # One-second quotes: flat at 100 until 2.5 s before the snapshot, then up.
    mid0 = 100.0
    mid1 = mid0 * (1 + rise_pct / 100)
    ids = np.array(["C1"])
    baselines.update_quotes(at - dt.timedelta(seconds=2.5), ids, np.array([mid0 - 0.05]), np.array([mid0 + 0.05]))
    baselines.update_quotes(at - dt.timedelta(seconds=1.5), ids, np.array([mid1 - 0.05]), np.array([mid1 + 0.05]))
    s = baselines.update(_chain(at, volume=volume, oi=oi, bid=mid1 - 0.05, ask=mid1 + 0.05))
    assert bool(s.jump[0]) is jump
    assert s.mid_change_pct[0] == pytest.approx(rise_pct, abs=1e-9)


def test_a_rise_older_than_two_seconds_is_not_a_jump_now():
    baselines = ChainBaselines()
    at, volume, oi = _warm(baselines, AT + dt.timedelta(minutes=2))
    ids = np.array(["C1"])
    # The rise happened 2.5 s ago: 2 s ago the mid already stood at 101.
    baselines.update_quotes(at - dt.timedelta(seconds=2.5), ids, np.array([100.95]), np.array([101.05]))
    baselines.update_quotes(at - dt.timedelta(seconds=1.5), ids, np.array([100.95]), np.array([101.05]))
    s = baselines.update(_chain(at, volume=volume, oi=oi, bid=100.95, ask=101.05))
    assert not s.jump[0]


@pytest.mark.parametrize(("gap_s", "ready"), [(9, True), (60, True), (61, False)])
def test_the_first_snapshot_after_a_gap_is_scored_against_the_pre_gap_baseline(gap_s, ready):
    baselines = ChainBaselines()
    at, volume, oi = _warm(baselines, AT + dt.timedelta(minutes=2))
    at += dt.timedelta(seconds=gap_s - 3)
    # A burst arrives with the recovering feed: ten times the gap's normal volume.
    intervals = gap_s / 3
    s = baselines.update(_chain(at, volume=volume + int(10 * intervals * 715), oi=oi, bid=100.95, ask=101.05))
    assert bool(s.ready[0]) is ready and bool(s.volume_spike[0]) is ready
    if ready:  # the mid 2 s ago is the last one before the gap: the rise is a jump
        assert s.jump[0]


def test_a_normal_interval_after_a_gap_is_not_a_spike():
    baselines = ChainBaselines()
    at, volume, oi = _warm(baselines, AT + dt.timedelta(minutes=2))
    at += dt.timedelta(seconds=9)  # 12 s since the last snapshot: four intervals' worth
    s = baselines.update(_chain(at, volume=volume + 4 * 715, oi=oi, bid=99.95, ask=100.05))
    assert s.ready[0] and not s.volume_spike[0]


def _confirm_detector(step: int, minutes: int = 30) -> tuple[VolOiDetector, ChainBaselines, dt.datetime, int, int]:
    """A contract whose OI moved ±step each 3 s, alternating in 2-interval runs, for ``minutes``."""
    from trading.strategies.vol_oi.config import VolOiConfig

    detector = VolOiDetector(VolOiConfig(underlyings=("NIFTY",)))
    baselines = detector._baselines("NIFTY")
    pattern = (step, step, -step, -step)
    at, volume, oi = _warm(baselines, AT + dt.timedelta(minutes=minutes), oi_step=lambda i: pattern[i % 4])
    return detector, baselines, at, volume, oi


def _horizon(baselines: ChainBaselines, k: int) -> tuple[float, float, float]:
    slot = baselines.slots(np.array(["C1"]))
    return tuple(float(v[0]) for v in baselines.oi_horizon_stats(slot, np.array([k])))


def _build_around(threshold: float, extra: int) -> int:
    """A build in whole contracts: one below, at (the largest not above) or one above the threshold."""
    assert threshold != int(threshold)  # "at" is then unambiguous: floor(threshold) is not above it
    return int(np.floor(threshold)) + extra


@pytest.mark.parametrize(("extra", "confirmed"), [(-1, False), (0, False), (1, True)])
def test_oi_confirmation_is_the_build_since_the_signal_against_sigma_of_that_horizon(extra, confirmed):
    detector, baselines, at, volume, oi = _confirm_detector(650)
    detector.spikes["C1"] = Pending(at - dt.timedelta(seconds=30), float(oi))
    k = 10
    mean, std, n = _horizon(baselines, k)
    assert n >= MIN_INDEPENDENT_CHANGES * k  # half an hour of 30-s changes: their own σ
    threshold = mean + detector.config.oi_sigma * std  # the build that is exactly 1.5σ of 30-s changes
    build = _build_around(threshold, extra)
    found = detector.on_snapshot(_chain(at, volume=volume + 715, oi=oi + build, bid=99.95, ask=100.05))
    confirms = [d for d in found if d.kind == "confirm"]
    assert bool(confirms) is confirmed
    if confirmed:
        assert confirms[0].features["oi_build"] == build and confirms[0].features["oi_horizon_s"] == 30


@pytest.mark.parametrize(("extra", "confirmed"), [(-1, False), (0, False), (1, True)])
def test_early_in_the_session_a_horizons_sigma_is_the_one_interval_sigma_scaled(extra, confirmed):
    # Two minutes in, the 30 overlapping 30-s changes are about three independent ones: their
    # own spread (±1,300 or 0 here) is too narrow to trust, so the build is judged against
    # σ₁·√k, a random walk's spread over k intervals.
    detector, baselines, at, volume, oi = _confirm_detector(650, minutes=2)
    detector.spikes["C1"] = Pending(at - dt.timedelta(seconds=30), float(oi))
    k = 10
    mean_k, std_k, n = _horizon(baselines, k)
    assert n < MIN_INDEPENDENT_CHANGES * k
    mean1, std1, _ = _horizon(baselines, 1)
    threshold = mean1 * k + detector.config.oi_sigma * std1 * k**0.5
    assert mean_k + detector.config.oi_sigma * std_k < threshold - 1000  # the narrow one would confirm far below
    build = _build_around(threshold, extra)
    found = detector.on_snapshot(_chain(at, volume=volume + 715, oi=oi + build, bid=99.95, ask=100.05))
    assert any(d.kind == "confirm" for d in found) is confirmed


def test_a_fall_in_oi_never_confirms_and_nothing_confirms_after_the_window():
    detector, _, at, volume, oi = _confirm_detector(650)
    detector.spikes["C1"] = Pending(at - dt.timedelta(seconds=30), float(oi))
    found = detector.on_snapshot(_chain(at, volume=volume + 715, oi=oi - 50_000, bid=99.95, ask=100.05))
    assert not any(d.kind == "confirm" for d in found)
    detector.spikes["C1"] = Pending(at - dt.timedelta(seconds=241), float(oi))
    found = detector.on_snapshot(
        _chain(at + dt.timedelta(seconds=3), volume=volume + 1430, oi=oi + 50_000, bid=99.95, ask=100.05)
    )
    assert not any(d.kind == "confirm" for d in found)


def test_the_strike_step_is_found_again_whenever_the_chains_strikes_change():
    """The step that bounds "near the money" is kept per underlying while its strikes
    stay the same, and found again when the window moves or a strike is missing."""
    from trading.strategies.vol_oi.config import VolOiConfig

    detector = VolOiDetector(VolOiConfig(underlyings=("NIFTY", "BANKNIFTY")))
    chain = _chain(AT, volume=0, oi=1, bid=1.0, ask=1.1)
    for underlying, strikes, step in (
        ("NIFTY", [24400, 24450, 24500], 50),
        ("NIFTY", [24400, 24450, 24500], 50),
        ("BANKNIFTY", [52000, 52100, 52200], 100),
        ("NIFTY", [24450, 24500, 24550], 50),
        ("NIFTY", [24400, 24500, 24600], 100),
        ("NIFTY", [24500], 0.0),
        ("BANKNIFTY", [52000, 52100, 52200], 100),
    ):
        chain.underlying, chain.strike = underlying, np.array(strikes, dtype=float)
        assert detector._strike_step(chain) == step
