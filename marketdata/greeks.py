"""Vectorised Black-Scholes: price, delta, gamma, theta (per day), vega (per
volatility point) and implied volatility over numpy arrays.

Inputs broadcast against each other: spot ``s``, strike ``k``, time to expiry
in years ``t``, risk-free rate ``r`` (continuous), volatility ``sigma``
(annualised, 0.15 = 15 %), ``is_call`` booleans. Only the normal CDF comes
from scipy (``ndtr``); everything else is numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

_SQRT_2PI = np.sqrt(2.0 * np.pi)
DAYS_PER_YEAR = 365.0

# Reasons an implied volatility could not be found (IVResult.status).
IV_OK = 0
IV_BELOW_INTRINSIC = 1  # price under the no-arbitrage lower bound
IV_ABOVE_MAX = 2  # price over the upper bound (spot for a call, discounted strike for a put)
IV_NO_TIME = 3  # expired or non-positive inputs
IV_NOT_CONVERGED = 4


def _pdf(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / _SQRT_2PI


def _d1_d2(s, k, t, r, sigma):
    s, k, t, r, sigma = (np.asarray(a, dtype=np.float64) for a in (s, k, t, r, sigma))
    with np.errstate(divide="ignore", invalid="ignore"):
        vol_t = sigma * np.sqrt(t)
        d1 = (np.log(s / k) + (r + 0.5 * sigma * sigma) * t) / vol_t
    return d1, d1 - vol_t, s, k, t, r, sigma


def price(s, k, t, r, sigma, is_call) -> np.ndarray:
    d1, d2, s, k, t, r, sigma = _d1_d2(s, k, t, r, sigma)
    disc = np.exp(-r * t)
    call = s * ndtr(d1) - k * disc * ndtr(d2)
    put = k * disc * ndtr(-d2) - s * ndtr(-d1)
    out = np.where(is_call, call, put)
    # At expiry (or zero vol) the value is intrinsic, discounted strike for zero vol.
    intrinsic = np.where(is_call, np.maximum(s - k * disc, 0.0), np.maximum(k * disc - s, 0.0))
    return np.where((t > 0) & (sigma > 0), out, intrinsic)


def _expired(t, sigma) -> np.ndarray:
    return ~((np.asarray(t) > 0) & (np.asarray(sigma) > 0))


def _expiry_delta(s, k, t, r, is_call) -> np.ndarray:
    """Delta at expiry (or zero vol): 1/−1 in the money, 0 out of it; at the money
    (on the forward) ½/−½, the average of the two one-sided limits."""
    forward_k = np.asarray(k, dtype=np.float64) * np.exp(-np.asarray(r) * np.maximum(np.asarray(t), 0.0))
    s = np.asarray(s, dtype=np.float64)
    call = np.where(s > forward_k, 1.0, np.where(s < forward_k, 0.0, 0.5))
    return np.where(is_call, call, call - 1.0)


def delta(s, k, t, r, sigma, is_call) -> np.ndarray:
    d1, *_ = _d1_d2(s, k, t, r, sigma)
    live = np.where(is_call, ndtr(d1), ndtr(d1) - 1.0)
    return np.where(_expired(t, sigma), _expiry_delta(s, k, t, r, is_call), live)


def gamma(s, k, t, r, sigma) -> np.ndarray:
    d1, _, s, _, t, _, sigma = _d1_d2(s, k, t, r, sigma)
    with np.errstate(divide="ignore", invalid="ignore"):
        live = _pdf(d1) / (s * sigma * np.sqrt(t))
    return np.where(_expired(t, sigma), 0.0, live)


def vega(s, k, t, r, sigma) -> np.ndarray:
    """Change in price for a one-point (0.01) change in volatility."""
    d1, _, s, _, t, _, sigma = _d1_d2(s, k, t, r, sigma)
    live = s * _pdf(d1) * np.sqrt(np.maximum(t, 0.0)) / 100.0
    return np.where(_expired(t, sigma), 0.0, live)


def theta(s, k, t, r, sigma, is_call) -> np.ndarray:
    """Change in price per calendar day (negative for a long option, usually)."""
    d1, d2, s, k, t, r, sigma = _d1_d2(s, k, t, r, sigma)
    disc = np.exp(-r * t)
    with np.errstate(divide="ignore", invalid="ignore"):
        decay = -s * _pdf(d1) * sigma / (2.0 * np.sqrt(t))
    call = decay - r * k * disc * ndtr(d2)
    put = decay + r * k * disc * ndtr(-d2)
    return np.where(_expired(t, sigma), 0.0, np.where(is_call, call, put) / DAYS_PER_YEAR)


@dataclass(frozen=True, slots=True)
class Greeks:
    price: np.ndarray
    delta: np.ndarray
    gamma: np.ndarray
    theta: np.ndarray
    vega: np.ndarray


def _parity_price(s, k, t, r, sigma, is_call, d1, d2):
    """The price ``all_greeks`` gives (the put by put-call parity), and what it shares with the Greeks."""
    disc = np.exp(-r * t)
    nd1, nd2 = ndtr(d1), ndtr(d2)
    call = s * nd1 - k * disc * nd2
    put = call - s + k * disc  # put-call parity
    expired = _expired(t, sigma)
    value = np.where(is_call, call, put)
    if expired.any():  # only then is there an intrinsic value to put in
        intrinsic = np.where(is_call, np.maximum(s - k * disc, 0.0), np.maximum(k * disc - s, 0.0))
        value = np.where(expired, intrinsic, value)
    return value, disc, nd1, nd2, expired


def parity_price(s, k, t, r, sigma, is_call) -> np.ndarray:
    """``all_greeks(...).price`` bit for bit, without the Greeks: for quotes that show a price only."""
    d1, d2, s, k, t, r, sigma = _d1_d2(s, k, t, r, sigma)
    return _parity_price(s, k, t, r, sigma, is_call, d1, d2)[0]


def all_greeks(s, k, t, r, sigma, is_call) -> Greeks:
    """Everything at once, sharing d1/d2 (what the simulator uses per snapshot)."""
    d1, d2, s, k, t, r, sigma = _d1_d2(s, k, t, r, sigma)
    value, disc, nd1, nd2, expired = _parity_price(s, k, t, r, sigma, is_call, d1, d2)
    pdf1 = _pdf(d1)
    sqrt_t = np.sqrt(np.maximum(t, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        gam = pdf1 / (s * sigma * sqrt_t)
        decay = -s * pdf1 * sigma / (2.0 * sqrt_t)
    th_call = decay - r * k * disc * nd2
    th_put = decay + r * k * disc * (1.0 - nd2)
    live = Greeks(
        price=value,
        delta=np.where(is_call, nd1, nd1 - 1.0),
        gamma=np.asarray(gam),  # arrays, as np.where gives, for 0-d inputs too
        theta=np.where(is_call, th_call, th_put) / DAYS_PER_YEAR,
        vega=np.asarray(s * pdf1 * sqrt_t / 100.0),
    )
    if not expired.any():
        return live
    # At T = 0 (expiry-day close) or zero vol: the expiry limits, never NaN.
    return Greeks(
        price=value,
        delta=np.where(expired, _expiry_delta(s, k, t, r, is_call), live.delta),
        gamma=np.where(expired, 0.0, live.gamma),
        theta=np.where(expired, 0.0, live.theta),
        vega=np.where(expired, 0.0, live.vega),
    )


@dataclass(frozen=True, slots=True)
class IVResult:
    iv: np.ndarray  # NaN where status != IV_OK
    status: np.ndarray  # int8 codes IV_*


def implied_vol(
    market_price, s, k, t, r, is_call, *, tol: float = 1e-9, max_iter: int = 100, lo: float = 1e-4, hi: float = 5.0
) -> IVResult:
    """Implied volatility for every element at once.

    Newton steps where vega is healthy, bisection otherwise, always inside a
    shrinking bracket [lo, hi], so it converges for every price strictly
    inside the no-arbitrage bounds. Prices outside them get NaN and a status
    saying which bound was broken, never a made-up number.
    """
    p, s, k, t, r = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (market_price, s, k, t, r)))
    is_call = np.broadcast_to(np.asarray(is_call, dtype=bool), p.shape)
    disc = np.exp(-r * t)
    lower = np.where(is_call, np.maximum(s - k * disc, 0.0), np.maximum(k * disc - s, 0.0))
    upper = np.where(is_call, s, k * disc)

    status = np.zeros(p.shape, dtype=np.int8)
    status[~(t > 0) | ~(s > 0) | ~(k > 0) | ~np.isfinite(p)] = IV_NO_TIME
    status[(status == IV_OK) & (p <= lower)] = IV_BELOW_INTRINSIC
    status[(status == IV_OK) & (p >= upper)] = IV_ABOVE_MAX
    solve = status == IV_OK

    a = np.full(p.shape, lo)
    b = np.full(p.shape, hi)
    x = np.full(p.shape, 0.2)
    done = ~solve
    # What every step shares, computed once: each step is then ``all_greeks``' price and
    # vega, by the same operations in the same order (so the same doubles), without the
    # Greeks the solver does not read. Elements not solved are never read again.
    log_sk = np.log(s / k)
    sqrt_t = np.sqrt(t)
    k_disc = k * disc
    vega_t = np.sqrt(np.maximum(t, 0.0))
    for _ in range(max_iter):
        if done.all():
            break
        with np.errstate(divide="ignore", invalid="ignore"):
            vol_t = x * sqrt_t
            d1 = (log_sk + (r + 0.5 * x * x) * t) / vol_t
        call = s * ndtr(d1) - k_disc * ndtr(d1 - vol_t)
        diff = np.where(is_call, call, call - s + k_disc) - p
        v = s * _pdf(d1) * vega_t / 100.0 * 100.0
        # Converged when the volatility error (price error / vega) is under tol,
        # or the price is matched to machine precision.
        converged = (np.abs(diff) < tol * v) | (np.abs(diff) <= 1e-12 * np.maximum(1.0, p))
        done = done | converged
        # Keep the bracket: price is increasing in volatility.
        a = np.where(~done & (diff < 0), x, a)
        b = np.where(~done & (diff > 0), x, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = x - diff / v
        ok = np.isfinite(newton) & (newton > a) & (newton < b)
        x = np.where(done, x, np.where(ok, newton, 0.5 * (a + b)))
    status[solve & ~done] = IV_NOT_CONVERGED
    iv = np.where(status == IV_OK, x, np.nan)
    return IVResult(iv=iv, status=status)
