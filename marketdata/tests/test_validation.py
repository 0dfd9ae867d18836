from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata import validation as v
from marketdata.feeds.base import ChainSnapshot, LtpTick
from quanthub.clock import IST

NOW = dt.datetime(2026, 11, 23, 10, 0, tzinfo=IST)


def chain(n=6, *, at=NOW, bid=None, ask=None, last=None, strikes=None, underlying="NIFTY"):
    strikes = np.repeat(np.arange(24400.0, 24400.0 + 50 * (n // 2), 50), 2) if strikes is None else strikes
    n = len(strikes)
    bid = np.full(n, 100.0) if bid is None else np.asarray(bid, dtype=float)
    ask = bid + 0.1 if ask is None else np.asarray(ask, dtype=float)
    last = bid.copy() if last is None else np.asarray(last, dtype=float)
    zeros = np.zeros(n)
    ints = np.zeros(n, dtype=np.int64)
    return ChainSnapshot(
        underlying,
        dt.date(2026, 11, 24),
        at,
        at,
        24500.0,
        np.array([f"{underlying}{int(k)}{i % 2}" for i, k in enumerate(strikes)]),
        strikes,
        np.tile(np.array([0, 1], dtype=np.int8), n // 2),
        last,
        ints,
        ints,
        ints,
        bid,
        ask,
        ints + 650,
        ints + 650,
        zeros,
        zeros,
        zeros,
        zeros,
        zeros,
    )


@pytest.mark.parametrize(
    ("bid", "ask", "last", "flag", "name"),
    [
        ([100, 100.2, 100, 100, 100, 100], [99.9, 100.3, 100.1, 100.1, 100.1, 100.1], None, v.CROSSED, "crossed"),
        ([100, -5, 100, 100, 100, 100], None, None, v.NEGATIVE, "negative"),
        ([100, 0, 100, 100, 100, 100], [100.1, 0, 100.1, 100.1, 100.1, 100.1], None, v.ZERO, "zero"),
        ([100, np.nan, 100, 100, 100, 100], None, None, v.NAN, "nan"),
    ],
)
def test_each_bad_quote_kind_is_flagged_masked_and_counted(bid, ask, last, flag, name):
    validator = v.ChainValidator()
    snapshot = chain(bid=bid, ask=ask, last=last)
    report = validator.validate(snapshot, NOW)
    bad = np.flatnonzero(snapshot.flags)
    assert len(bad) == 1 and snapshot.flags[bad[0]] & flag
    assert len(snapshot) == 6  # masked, not dropped
    assert report.counts[name] == 1 and validator.counts[name] == 1
    assert report.quality == pytest.approx(5 / 6)


def test_an_outlier_against_the_previous_quote_is_flagged_once():
    validator = v.ChainValidator()
    validator.validate(chain(), NOW)
    jumped = chain(bid=[100, 450, 100, 100, 100, 100])
    validator.validate(jumped, NOW + dt.timedelta(seconds=3))
    assert jumped.flags[1] & v.OUTLIER and validator.counts["outlier"] == 1
    persisted = chain(bid=[100, 452, 100, 100, 100, 100])
    validator.validate(persisted, NOW + dt.timedelta(seconds=6))
    assert persisted.flags[1] == 0


def test_a_cheap_wing_moving_a_few_ticks_is_not_an_outlier():
    validator = v.ChainValidator()
    validator.validate(chain(bid=np.full(6, 0.05)), NOW)
    moved = chain(bid=np.full(6, 0.30))
    validator.validate(moved, NOW + dt.timedelta(seconds=3))
    assert not moved.flags.any()


def test_a_stale_chain_masks_every_row():
    validator = v.ChainValidator(stale_after_s=6)
    snapshot = chain(at=NOW - dt.timedelta(seconds=7))
    report = validator.validate(snapshot, NOW)
    assert (snapshot.flags & v.STALE).all() and report.counts["stale"] == 6 and report.quality == 0


def test_missing_strikes_are_counted_against_the_grid():
    validator = v.ChainValidator(strike_steps={"NIFTY": 50})
    strikes = np.repeat(np.array([24400.0, 24450.0, 24550.0, 24600.0]), 2)
    report = validator.validate(chain(strikes=strikes), NOW)
    assert report.missing_strikes == 1 and validator.counts["missing_strikes"] == 1
    assert report.quality == pytest.approx(8 / 10)


@pytest.mark.parametrize(
    ("ltp", "age", "problem"),
    [(float("nan"), 0, "nan"), (-1.0, 0, "negative"), (0.0, 0, "zero"), (24500.0, 4, "stale")],
)
def test_bad_ltp_ticks_are_rejected_and_counted(ltp, age, problem):
    validator = v.ChainValidator()
    tick = LtpTick("13", "IDX_I", "NIFTY", "INDEX", ltp, NOW - dt.timedelta(seconds=age), NOW)
    assert validator.validate_ltp(tick, NOW) is False
    assert validator.counts[f"ltp_{problem}"] == 1


def test_feed_health_goes_stale_when_chains_or_ltp_stop():
    health = v.FeedHealth(chain_stale_s=6, ltp_stale_s=3)
    assert health.is_stale(NOW)  # nothing seen yet is not fresh
    health.observe_chain(chain(), NOW)
    health.observe_ltp(LtpTick("13", "IDX_I", "NIFTY", "INDEX", 24500.0, NOW, NOW), NOW)
    assert not health.is_stale(NOW + dt.timedelta(seconds=2))
    assert health.is_stale(NOW + dt.timedelta(seconds=4))  # LTP older than 3 s
    health.observe_ltp(LtpTick("13", "IDX_I", "NIFTY", "INDEX", 24501.0, NOW + dt.timedelta(seconds=6), NOW), NOW)
    assert health.is_stale(NOW + dt.timedelta(seconds=7))  # chain older than 6 s
    state = health.as_dict(NOW + dt.timedelta(seconds=7))
    assert state["stale"] is True and state["chain_age_s"]["NIFTY"] == 7.0


_PRICE = st.one_of(
    st.floats(0.05, 400, allow_nan=False),
    st.sampled_from([0.0, -1.0, float("nan"), float("inf")]),
)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(_PRICE, _PRICE, _PRICE), min_size=6, max_size=6),  # bid, ask, last per row
            st.sets(st.integers(0, 2), max_size=2),  # strike pairs left out (missing strikes)
            st.sampled_from([0.0, 1.0, 7.0]),  # age of the chain, seconds
        ),
        min_size=1,
        max_size=12,
    )
)
def test_the_flags_counts_and_quality_are_the_rules_applied_row_by_row(chains):
    """Each rule written out plainly per row, over a sequence of chains (outliers
    judged against the last sane mid of each contract, across chains) — the
    validator's array version gives the same flags, counts, missing strikes and quality."""
    validator = v.ChainValidator(strike_steps={"NIFTY": 50})
    remembered: dict[str, float] = {}
    for rows, left_out, age in chains:
        keep = [i for i in range(6) if i // 2 not in left_out] or [0, 1]
        strikes = np.repeat(np.arange(24400.0, 24550.0, 50), 2)[keep]
        bid, ask, last = (np.array([rows[i][j] for i in keep], dtype=float) for j in range(3))
        snapshot = chain(at=NOW - dt.timedelta(seconds=age), bid=bid, ask=ask, last=last, strikes=strikes)
        expected = []
        for sid, b, a, ls in zip(snapshot.security_id.tolist(), bid, ask, last, strict=True):
            flag = 0
            finite = all(math.isfinite(x) for x in (b, a, ls))
            flag |= 0 if finite else v.NAN
            flag |= v.NEGATIVE if b < 0 or a < 0 or ls < 0 else 0
            flag |= v.ZERO if finite and (b == 0 or a == 0) else 0
            flag |= v.CROSSED if finite and b > a else 0
            mid, before = (b + a) / 2.0, remembered.get(sid)
            moved = before is not None and flag == 0 and abs(math.log(mid / before)) > math.log(3.0)
            if moved and abs(mid - before) > 1.0:
                flag |= v.OUTLIER
            if not flag & (v.NAN | v.NEGATIVE | v.ZERO | v.CROSSED):
                remembered[sid] = mid
            expected.append(flag | (v.STALE if age > 6.0 else 0))
        listed = sorted(set(strikes.tolist()))
        missing = int(round((listed[-1] - listed[0]) / 50)) + 1 - len(listed)
        report = validator.validate(snapshot, NOW)
        assert snapshot.flags.tolist() == expected
        counts = {name: sum(1 for f in expected if f & bit) for bit, name in v.FLAG_NAMES.items()}
        counts = {k: n for k, n in counts.items() if n} | ({"missing_strikes": missing} if missing else {})
        assert report.counts == counts and report.missing_strikes == missing
        bad = sum(1 for f in expected if f)
        assert report.bad_rows == bad
        assert snapshot.quality == pytest.approx((len(keep) - bad) / (len(keep) + 2 * missing))
