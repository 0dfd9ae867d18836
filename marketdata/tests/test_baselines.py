from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
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


class _RowByRow(ChainBaselines):
    """The same baselines, always gathering and scattering row by row (never a block)."""

    def _slots_for(self, ids, cache="chain"):
        slots, _ = super()._slots_for(ids, cache)
        return slots, slots


def _same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            # which contracts are in the chain: mostly the same as the last one (one block of
            # slots), sometimes another set (contracts leave and return: rows gathered one by one)
            st.one_of(st.just(None), st.just(None), st.sets(st.integers(0, 11), min_size=1, max_size=12)),
            st.integers(0, 2),  # how many rows validation flags
            st.sampled_from([3, 3, 3, 6, 30, 90]),  # seconds since the last chain: gaps, and a long one
            st.booleans(),  # one-second quotes for some contracts before it
        ),
        min_size=1,
        max_size=120,
    ),
    st.integers(0, 2**32 - 1),
)
def test_the_block_path_and_the_row_by_row_path_agree_to_the_bit(steps, seed):
    """A chain whose contracts keep their slots is read and written through views of one
    block; any other is gathered row by row. Contracts leaving and returning, flagged
    rows, gaps, quotes in between and growth past the capacity give the same signals and
    the same horizon statistics, bit for bit; and the horizon statistics are those of
    every k-snapshot OI change of each contract's unbroken runs of good rows."""
    rng = np.random.default_rng(seed)
    universe = np.array([f"S{i:02d}" for i in range(12)])
    volume = np.zeros(12)
    oi = np.full(12, 1_000_000.0)
    mid = np.full(12, 100.0)
    # Short windows (5 and 8 chains), so every state (windows filling, then full) is reached.
    windows = {"volume_window_s": 15.0, "oi_window_s": 24.0, "capacity": 4}
    block, rows = ChainBaselines(**windows), _RowByRow(**windows)
    t, keep, paths = 0, np.arange(6), set()
    runs: dict[int, list[list[float]]] = {}  # per contract: its runs of good OI values
    last_good: dict[int, int] = {}
    for members, flagged, gap, quotes in steps:
        t += gap
        at = START + dt.timedelta(seconds=t)
        volume += rng.poisson(30, 12) * 65
        oi += np.round(rng.normal(0, 4, 12)) * 65
        mid *= np.exp(rng.normal(0, 0.003, 12))
        if members is not None:
            keep = np.array(sorted(members))
        paths.add(type(block._slots_for(universe[keep])[1]))
        snapshots = []
        for _ in range(2):
            snapshot = _snapshot(0, universe[keep], volume[keep], oi[keep], mid[keep].copy())
            snapshot.exchange_time = snapshot.received_at = at
            snapshot.flags[: min(flagged, len(keep) - 1)] = 1
            snapshots.append(snapshot)
        a, b = block.update(snapshots[0]), rows.update(snapshots[1])
        for name in a.__slots__:
            assert _same(getattr(a, name), getattr(b, name)), name
        for row, contract in enumerate(keep):
            if snapshots[0].flags[row]:
                continue
            if t - last_good.get(contract, -10**6) > 60.5:  # away longer than recover_s: a new run
                runs.setdefault(contract, []).append([])
            runs[contract][-1].append(oi[contract])
            last_good[contract] = t
        slots = block.slots(universe[keep])
        k = rng.integers(1, 12, len(keep))
        horizon = block.oi_horizon_stats(slots, k)
        for x, y in zip(horizon, rows.oi_horizon_stats(rows.slots(universe[keep]), k), strict=True):
            assert _same(x, y)
        for row, contract in enumerate(keep):
            lag = min(int(k[row]), 8)
            changes = [r[i] - r[i - lag] for r in runs.get(contract, []) for i in range(lag, len(r))]
            mean, std, n = (float(v[row]) for v in horizon)
            assert n == len(changes)
            assert mean == pytest.approx(np.mean(changes) if changes else 0.0, rel=1e-9, abs=1e-6)
            assert std == pytest.approx(np.std(changes, ddof=1) if len(changes) > 1 else 0.0, rel=1e-6, abs=1e-4)
        if quotes:  # one-second quotes of some contracts before the next chain
            q = keep[:3] if rng.random() < 0.7 else np.array(sorted(rng.choice(12, 3, replace=False)))
            for baselines in (block, rows):
                baselines.update_quotes(at + dt.timedelta(seconds=1), universe[q], mid[q] - 0.05, mid[q] + 0.05)
    assert slice in paths  # the first chain's contracts are always one block
