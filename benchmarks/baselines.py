"""Rolling baselines: 2 underlyings × 101 strikes × CE/PE = 404 contracts per
update, all three detectors, against a straightforward pandas rolling-window
implementation of the same statistics in the same process.

    python benchmarks/baselines.py [--json PATH] [--snapshots N]
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, report, setup_django  # noqa: E402

CONTRACTS = 404


class PandasBaselines:
    """The same statistics, the straightforward pandas way: append each
    snapshot's per-interval values to a frame and recompute rolling windows
    (``DataFrame.rolling``) for the latest row on every update."""

    def __init__(self, volume_n=20, oi_n=80, oi_min=20, sigma=3.0, multiple=5.0, jump_pct=0.15, oi_sigma=1.5):
        self.volume_n, self.oi_n, self.oi_min = volume_n, oi_n, oi_min
        self.sigma, self.multiple, self.jump_pct, self.oi_sigma = sigma, multiple, jump_pct, oi_sigma
        self.dv = pd.DataFrame()
        self.doi = pd.DataFrame()
        self.mid = pd.DataFrame()
        self.last = None

    def update(self, volume: np.ndarray, oi: np.ndarray, mid: np.ndarray):
        if self.last is not None:
            self.dv = pd.concat([self.dv, pd.DataFrame([volume - self.last[0]])], ignore_index=True)
            self.doi = pd.concat([self.doi, pd.DataFrame([oi - self.last[1]])], ignore_index=True)
        self.mid = pd.concat([self.mid, pd.DataFrame([mid])], ignore_index=True)
        self.last = (volume, oi, mid)
        # Keep one window (plus the row being judged); recompute the windows.
        self.dv, self.doi, self.mid = self.dv.tail(self.volume_n + 1), self.doi.tail(self.oi_n + 1), self.mid.tail(2)
        if len(self.dv) < 2:
            return None
        v_mean = self.dv.rolling(self.volume_n, min_periods=1).mean().shift(1).iloc[-1]
        v_std = self.dv.rolling(self.volume_n, min_periods=2).std().shift(1).iloc[-1]
        dv = self.dv.iloc[-1]
        spike = ((dv - v_mean) / v_std > self.sigma) & (dv > self.multiple * v_mean)
        jump = (self.mid.pct_change().iloc[-1] * 100).abs() >= self.jump_pct
        o_mean = self.doi.rolling(self.oi_n, min_periods=1).mean().shift(1).iloc[-1]
        o_std = self.doi.rolling(self.oi_n, min_periods=2).std().shift(1).iloc[-1]
        confirm = (self.doi.iloc[-1] - o_mean) / o_std > self.oi_sigma
        return spike & jump, confirm


class PandasTailBaselines:
    """A leaner pandas peer: the same windows via ``tail().mean()/std()`` on
    frames trimmed to one window. Reported too, so the ratio is not flattered."""

    def __init__(self, volume_n=20, oi_n=80):
        self.volume_n, self.oi_n = volume_n, oi_n
        self.dv = pd.DataFrame()
        self.doi = pd.DataFrame()
        self.last = None

    def update(self, volume: np.ndarray, oi: np.ndarray, mid: np.ndarray):
        if self.last is None:
            self.last = (volume, oi, mid)
            return None
        dv, doi = volume - self.last[0], oi - self.last[1]
        if self.dv.empty:
            self.dv, self.doi, self.last = pd.DataFrame([dv]), pd.DataFrame([doi]), (volume, oi, mid)
            return None
        v_window, o_window = self.dv.tail(self.volume_n), self.doi.tail(self.oi_n)
        v_mean, v_std = v_window.mean().to_numpy(), v_window.std().to_numpy()
        o_mean, o_std = o_window.mean().to_numpy(), o_window.std().to_numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            spike = ((dv - v_mean) / v_std > 3.0) & (dv > 5.0 * v_mean) & (np.abs(mid / self.last[2] - 1) >= 0.0015)
            confirm = (doi - o_mean) / o_std > 1.5
        self.dv = pd.concat([self.dv, pd.DataFrame([dv])], ignore_index=True).tail(self.volume_n)
        self.doi = pd.concat([self.doi, pd.DataFrame([doi])], ignore_index=True).tail(self.oi_n)
        self.last = (volume, oi, mid)
        return spike, confirm


def _rate(peer, volume, oi, mid, count: int) -> float:
    began = time.perf_counter()
    for t in range(count):
        peer.update(volume[t].astype(float), oi[t].astype(float), mid[t])
    return count / (time.perf_counter() - began)


def main() -> None:
    args_parser = parser(__doc__.splitlines()[0])
    args_parser.add_argument("--snapshots", type=int, default=3000)
    args = args_parser.parse_args()
    setup_django()
    from marketdata.baselines import ChainBaselines
    from marketdata.feeds.base import ChainSnapshot
    from quanthub.clock import IST

    rng = np.random.default_rng(1)
    n = args.snapshots
    ids = np.array([f"{i:06d}" for i in range(CONTRACTS)])
    volume = np.cumsum(rng.poisson(30, (n, CONTRACTS)) * 65, axis=0)
    oi = 2_000_000 + np.cumsum(np.round(rng.normal(0, 4, (n, CONTRACTS))) * 65, axis=0)
    mid = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, (n, CONTRACTS)), axis=0))
    start = dt.datetime(2026, 11, 23, 9, 15, tzinfo=IST)
    zeros = np.zeros(CONTRACTS)
    qty = np.full(CONTRACTS, 650, dtype=np.int64)
    snapshots = [
        ChainSnapshot(
            "NIFTY",
            dt.date(2026, 11, 24),
            start + dt.timedelta(seconds=3 * t),
            start + dt.timedelta(seconds=3 * t),
            24500.0,
            ids,
            zeros,
            np.zeros(CONTRACTS, dtype=np.int8),
            mid[t],
            oi[t],
            oi[t],
            volume[t],
            mid[t] - 0.05,
            mid[t] + 0.05,
            qty,
            qty,
            zeros,
            zeros,
            zeros,
            zeros,
            zeros,
        )
        for t in range(n)
    ]

    baselines = ChainBaselines()
    timings = np.empty(n)
    for t, snapshot in enumerate(snapshots):
        began = time.perf_counter()
        signals = baselines.update(snapshot)
        _ = signals.volume_spike & signals.jump, signals.oi_confirm
        timings[t] = time.perf_counter() - began
    ours = timings[100:]  # after warm-up, as in a session

    pandas_rate = _rate(PandasBaselines(), volume, oi, mid, min(n, 300))
    tail_rate = _rate(PandasTailBaselines(), volume, oi, mid, min(n, 1000))

    rate = len(ours) / ours.sum()
    metrics = {
        "contracts": CONTRACTS,
        "p50_ms": float(np.percentile(ours, 50) * 1e3),
        "p99_ms": float(np.percentile(ours, 99) * 1e3),
        "snapshots_per_s": float(rate),
        "pandas_snapshots_per_s": float(pandas_rate),
        "speedup_vs_pandas": float(rate / pandas_rate),
        "pandas_tail_snapshots_per_s": float(tail_rate),
        "speedup_vs_pandas_tail": float(rate / tail_rate),
    }
    report("baselines", metrics, args.json)


if __name__ == "__main__":
    main()
