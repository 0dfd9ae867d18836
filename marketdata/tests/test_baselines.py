from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from marketdata.baselines import ChainBaselines
from marketdata.feeds.base import ChainSnapshot
from quanthub.clock import IST

START = dt.datetime(2026, 11, 23, 9, 15, tzinfo=IST)
SESSION_SNAPSHOTS = 7500  # 09:15–15:30, one chain every 3 s


def _session(n_contracts: int, n_snapshots: int, seed: int):
    rng = np.random.default_rng(seed)
    ids = np.array([f"C{i:03d}" for i in range(n_contracts)])
    volume = np.cumsum(rng.poisson(30, (n_snapshots, n_contracts)) * 65, axis=0)
    oi = 2_000_000 + np.cumsum(np.round(rng.normal(0, 4, (n_snapshots, n_contracts))) * 65, axis=0)
    mid = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, (n_snapshots, n_contracts)), axis=0))
    return ids, volume, oi, mid


def _snapshot(t, ids, volume, oi, mid):
    n = len(ids)
    z = np.zeros(n)
    return ChainSnapshot(
        "NIFTY",
        dt.date(2026, 11, 24),
        START + dt.timedelta(seconds=3 * t),
        START + dt.timedelta(seconds=3 * t),
        24500.0,
        ids,
        np.arange(n, dtype=float),
        np.zeros(n, dtype=np.int8),
        mid,
        oi.astype(np.int64),
        oi.astype(np.int64),
        volume.astype(np.int64),
        mid - 0.05,
        mid + 0.05,
        z.astype(np.int64) + 650,
        z.astype(np.int64) + 650,
        z,
        z,
        z,
        z,
        z,
    )


def test_it_matches_a_pandas_rolling_reference_over_a_full_session():
    ids, volume, oi, mid = _session(12, SESSION_SNAPSHOTS, seed=5)
    baselines = ChainBaselines()
    got = {"v_mean": [], "v_std": [], "o_std": [], "o_z": [], "chg": []}
    for t in range(SESSION_SNAPSHOTS):
        s = baselines.update(_snapshot(t, ids, volume[t], oi[t], mid[t]))
        got["v_mean"].append(s.volume_mean)
        got["v_std"].append(s.volume_std)
        got["o_std"].append(s.oi_std)
        got["o_z"].append(s.oi_z)
        got["chg"].append(s.mid_change_pct)

    dv = pd.DataFrame(volume).diff()
    doi = pd.DataFrame(oi).diff()
    # The statistics for interval t are over the window *before* it.
    ref_v_mean = dv.rolling(20, min_periods=1).mean().shift(1)
    ref_v_std = dv.rolling(20, min_periods=2).std().shift(1)
    ref_o_mean = doi.rolling(80, min_periods=1).mean().shift(1)
    ref_o_std = doi.rolling(80, min_periods=2).std().shift(1)
    ref_o_z = (doi - ref_o_mean) / ref_o_std
    ref_chg = (pd.DataFrame(mid + 0.0).pct_change()) * 100

    rows = slice(25, None)  # once the windows hold data
    for name, ref in (("v_mean", ref_v_mean), ("v_std", ref_v_std), ("o_std", ref_o_std), ("chg", ref_chg)):
        np.testing.assert_allclose(np.array(got[name])[rows], ref.to_numpy()[rows], rtol=1e-9, err_msg=name)
    # z uses a window of at least 20 intervals before it is reported.
    np.testing.assert_allclose(np.array(got["o_z"])[rows], ref_o_z.to_numpy()[rows], rtol=1e-9, atol=1e-12)


def test_a_burst_with_a_jump_is_a_spike_and_calm_is_not():
    ids, volume, oi, mid = _session(4, 60, seed=1)
    volume[40:, 2] += 65 * 30 * 40  # forty times the usual 3-second volume on contract 2
    mid[40:, 2] *= 1.01
    baselines = ChainBaselines()
    fired = []
    for t in range(60):
        s = baselines.update(_snapshot(t, ids, volume[t], oi[t], mid[t]))
        fired += [(t, int(i)) for i in np.flatnonzero(s.volume_spike & s.jump)]
    assert fired == [(40, 2)]


def test_flagged_rows_are_neither_learned_from_nor_signalled():
    ids, volume, oi, mid = _session(2, 40, seed=2)
    volume[30:, 0] += 65 * 30 * 40
    baselines = ChainBaselines()
    for t in range(40):
        snapshot = _snapshot(t, ids, volume[t], oi[t], mid[t])
        if t == 30:
            snapshot.flags[0] = 1
        s = baselines.update(snapshot)
        assert not (t == 30 and s.volume_spike[0])


def test_a_contract_returning_to_the_window_does_not_fake_a_spike():
    ids, volume, oi, mid = _session(3, 60, seed=3)
    baselines = ChainBaselines()
    spikes = 0
    for t in range(60):
        keep = slice(None) if not 30 <= t < 40 else slice(0, 2)  # contract 2 leaves for 30 s
        s = baselines.update(_snapshot(t, ids[keep], volume[t][keep], oi[t][keep], mid[t][keep]))
        spikes += int(s.volume_spike.sum())
    assert spikes == 0


def test_thresholds_change_at_once():
    ids, volume, oi, mid = _session(2, 40, seed=4)
    volume[30:, 1] += 65 * 30 * 4  # four times normal: under the 5x multiple
    mid[30:, 1] *= 1.01
    baselines = ChainBaselines()
    for t in range(30):
        baselines.update(_snapshot(t, ids, volume[t], oi[t], mid[t]))
    baselines.set_thresholds(volume_multiple=3.0)
    s = baselines.update(_snapshot(30, ids, volume[30], oi[30], mid[30]))
    assert s.volume_spike[1]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 5_000), min_size=3, max_size=3),
            st.lists(st.integers(-500, 500), min_size=3, max_size=3),
            st.lists(st.floats(0.05, 5_000, allow_nan=False), min_size=3, max_size=3),
        ),
        min_size=1,
        max_size=60,
    )
)
def test_it_never_returns_nan_on_valid_input(steps):
    ids = np.array(["A", "B", "C"])
    baselines = ChainBaselines()
    volume = np.zeros(3)
    oi = np.full(3, 100_000.0)
    for t, (dv, doi, mid) in enumerate(steps):
        volume = volume + np.array(dv)
        oi = np.maximum(oi + np.array(doi), 0)
        s = baselines.update(_snapshot(t, ids, volume, oi, np.array(mid)))
        for name in (
            "volume_delta",
            "volume_mean",
            "volume_std",
            "volume_z",
            "mid_change_pct",
            "oi_change",
            "oi_std",
            "oi_z",
        ):
            assert np.isfinite(getattr(s, name)).all(), name
