"""Black-Scholes against Hull, *Options, Futures and Other Derivatives*:
Example 15.6 (S=42, K=40, r=10 %, σ=20 %, T=0.5: call 4.76, put 0.81) and the
Greek letters example of chapter 19 (S=49, K=50, r=5 %, σ=20 %, T=20 weeks:
Δ=0.522, Γ=0.066, Θ=-4.31 per year, vega=12.1 per unit of volatility)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from marketdata import greeks as g

T20W = 20 / 52


def test_it_prices_hulls_example():
    assert round(float(g.price(42, 40, 0.5, 0.1, 0.2, True)), 2) == 4.76
    assert round(float(g.price(42, 40, 0.5, 0.1, 0.2, False)), 2) == 0.81


def test_it_reproduces_hulls_greek_letters():
    assert round(float(g.delta(49, 50, T20W, 0.05, 0.2, True)), 3) == 0.522
    assert round(float(g.gamma(49, 50, T20W, 0.05, 0.2)), 3) == 0.066
    assert round(float(g.theta(49, 50, T20W, 0.05, 0.2, True)) * 365, 2) == -4.31
    assert round(float(g.vega(49, 50, T20W, 0.05, 0.2)) * 100, 1) == 12.1


def test_all_greeks_agrees_with_the_single_functions():
    s = np.array([24000.0, 24000.0, 52000.0])
    k = np.array([24000.0, 24500.0, 51000.0])
    t, r, sigma = 7 / 365, 0.065, np.array([0.12, 0.14, 0.16])
    is_call = np.array([True, False, True])
    every = g.all_greeks(s, k, t, r, sigma, is_call)
    np.testing.assert_allclose(every.price, g.price(s, k, t, r, sigma, is_call), rtol=1e-12)
    np.testing.assert_allclose(every.delta, g.delta(s, k, t, r, sigma, is_call), rtol=1e-12)
    np.testing.assert_allclose(every.theta, g.theta(s, k, t, r, sigma, is_call), rtol=1e-12)
    np.testing.assert_allclose(every.vega, g.vega(s, k, t, r, sigma), rtol=1e-12)


@given(
    s=st.floats(1000, 60000),
    moneyness=st.floats(0.7, 1.3),
    t=st.floats(1 / 365, 1.0),
    r=st.floats(0.0, 0.1),
    sigma=st.floats(0.05, 1.0),
)
def test_put_call_parity_holds(s, moneyness, t, r, sigma):
    k = s * moneyness
    call = float(g.price(s, k, t, r, sigma, True))
    put = float(g.price(s, k, t, r, sigma, False))
    assert abs((call - put) - (s - k * np.exp(-r * t))) <= 1e-9 * s


@given(
    moneyness=st.floats(0.85, 1.15),
    t=st.floats(2 / 365, 0.5),
    sigma=st.floats(0.06, 0.8),
    is_call=st.booleans(),
)
def test_implied_vol_recovers_the_volatility(moneyness, t, sigma, is_call):
    s, r = 24000.0, 0.065
    k = s * moneyness
    # A price that volatility barely moves (deep out of the money) does not
    # identify the volatility; those are covered by the bounds test below.
    assume(float(g.vega(s, k, t, r, sigma)) > 1e-3)
    p = g.price(s, k, t, r, sigma, is_call)
    result = g.implied_vol(p, s, k, t, r, is_call)
    assert result.status == g.IV_OK
    assert abs(float(result.iv) - sigma) < 1e-6


def test_implied_vol_reports_prices_outside_no_arbitrage_bounds():
    result = g.implied_vol([1.0, 50.0, 5.0, 5.0], 42, 40, [0.5, 0.5, 0.5, 0.0], 0.1, True)
    assert list(result.status) == [g.IV_BELOW_INTRINSIC, g.IV_ABOVE_MAX, g.IV_OK, g.IV_NO_TIME]
    assert np.isnan(result.iv[[0, 1, 3]]).all()
    assert 0.05 < result.iv[2] < 1.0


def test_at_expiry_the_greeks_are_their_limits_not_nan():
    import warnings

    from marketdata import greeks as g

    s, k = 24500.0, np.array([24400.0, 24500.0, 24600.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in (0.0, -1e-9):
            calls = g.all_greeks(s, k, t, 0.065, 0.15, np.array([True] * 3))
            puts = g.all_greeks(s, k, t, 0.065, 0.15, np.array([False] * 3))
            assert calls.delta.tolist() == [1.0, 0.5, 0.0] and puts.delta.tolist() == [0.0, -0.5, -1.0]
            for greek in (calls, puts):
                assert greek.gamma.tolist() == [0.0] * 3 and greek.theta.tolist() == [0.0] * 3
                assert greek.vega.tolist() == [0.0] * 3
            assert calls.price.tolist() == pytest.approx([100.0, 0.0, 0.0])
            assert g.delta(s, k, t, 0.065, 0.15, True).tolist() == [1.0, 0.5, 0.0]
            assert g.gamma(s, k, t, 0.065, 0.15).tolist() == [0.0] * 3
            assert g.theta(s, k, t, 0.065, 0.15, False).tolist() == [0.0] * 3
    # Just before expiry they tend to the same limits.
    near = g.all_greeks(s, k, 1e-9, 0.065, 0.15, np.array([True] * 3))
    assert near.delta[0] == pytest.approx(1.0) and near.delta[2] == pytest.approx(0.0, abs=1e-12)


@given(
    moneyness=st.lists(st.floats(0.7, 1.3), min_size=1, max_size=12),
    t=st.floats(1 / 365, 0.5),
    sigma=st.floats(0.05, 0.9),
)
def test_the_greeks_of_live_contracts_do_not_depend_on_an_expired_one_beside_them(moneyness, t, sigma):
    """Without an expired contract the masks are skipped; the values are the same doubles."""
    s, r = 24000.0, 0.065
    k = s * np.array(moneyness)
    is_call = np.arange(len(k)) % 2 == 0
    alone = g.all_greeks(s, k, t, r, sigma, is_call)
    beside = g.all_greeks(s, np.append(k, s), np.append(np.full(len(k), t), 0.0), r, sigma, np.append(is_call, True))
    for name in ("price", "delta", "gamma", "theta", "vega"):
        assert getattr(alone, name).tobytes() == getattr(beside, name)[:-1].tobytes(), name
    assert g.parity_price(s, k, t, r, sigma, is_call).tobytes() == alone.price.tobytes()


def _solved_by_all_greeks(p, s, k, t, r, is_call, tol=1e-9, max_iter=100, lo=1e-4, hi=5.0):
    """The solver's steps written with ``all_greeks`` (its price and vega), for comparison."""
    a, b, x = np.full(p.shape, lo), np.full(p.shape, hi), np.full(p.shape, 0.2)
    done = np.zeros(p.shape, dtype=bool)
    for _ in range(max_iter):
        if done.all():
            break
        every = g.all_greeks(s, k, t, r, x, is_call)
        diff, v = every.price - p, every.vega * 100.0
        done = done | (np.abs(diff) < tol * v) | (np.abs(diff) <= 1e-12 * np.maximum(1.0, p))
        a, b = np.where(~done & (diff < 0), x, a), np.where(~done & (diff > 0), x, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - diff / v
        ok = np.isfinite(newton) & (newton > a) & (newton < b)
        x = np.where(done, x, np.where(ok, newton, 0.5 * (a + b)))
    return x


@given(
    moneyness=st.lists(st.floats(0.8, 1.2), min_size=1, max_size=12),
    t=st.floats(1 / 365, 0.3),
    sigma=st.floats(0.06, 0.8),
)
def test_implied_vol_takes_the_steps_all_greeks_would(moneyness, t, sigma):
    s, r = 24000.0, 0.065
    k = s * np.array(moneyness)
    is_call = np.arange(len(k)) % 2 == 1
    p = g.all_greeks(s, k, t, r, sigma, is_call).price
    found = g.implied_vol(p, s, k, t, r, is_call)
    assume((found.status == g.IV_OK).all())
    tt = np.full(len(k), t)
    assert (
        found.iv.tobytes() == _solved_by_all_greeks(p, np.full(len(k), s), k, tt, np.full(len(k), r), is_call).tobytes()
    )
