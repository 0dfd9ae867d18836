"""Features of each contract in a chain snapshot, for the anomaly model (pure).

They come from the same rolling baselines the Volume-OI detector uses
(``marketdata.baselines``), so a model trained on stored sessions sees exactly
what the live detector sees:

* ``volume_z`` — the interval's volume against its 1-minute baseline, in σ;
* ``volume_ratio`` — the interval's volume over the 1-minute mean;
* ``mid_change_pct`` — the mid price's change since the previous snapshot, %;
* ``oi_z`` — the interval's OI change against its baseline, in σ;
* ``spread_pct_rel`` — the bid-ask spread as a percentage of the mid, over the
  contract's own mean of it in the last minute (20 snapshots): a far wing
  always trades wide, and on the raw percentage the forest ranked every wing
  above the informed flow (AUC 0.67–0.78 against 0.92–0.99 on the relative
  figure, simulated sessions);
* ``iv_change`` — the implied volatility's change since the previous snapshot,
  in volatility points.

The heavy-tailed ones (z-scores, ratios) are put on a signed log scale: an
Isolation Forest draws its splits uniformly between a feature's minimum and
maximum, and a raw z-score capped at 10⁶ would leave every split but one
between ordinary values unused. Rows that validation flagged, or whose
baselines are not ready yet, are not ``usable``: they are neither trained on nor
scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marketdata.baselines import BaselineSignals, ChainBaselines, _Window  # the same ring buffers, same room
from marketdata.feeds.base import ChainSnapshot

FEATURES = ("volume_z", "volume_ratio", "mid_change_pct", "oi_z", "spread_pct_rel", "iv_change")
RATIO_CAP = 1e4


def signed_log(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


@dataclass(slots=True)
class SnapshotFeatures:
    matrix: np.ndarray  # (contracts, len(FEATURES)) float64, finite
    usable: np.ndarray  # bool per contract


class FeatureTracker:
    """Turns one underlying's snapshots into feature rows.

    It keeps only what the baselines do not: each contract's previous implied
    volatility. Pass the baselines' signals when a detector has already
    updated them for this snapshot; otherwise the tracker keeps baselines of
    its own (training, the benchmark).
    """

    def __init__(self, baselines: ChainBaselines | None = None, *, window: int = 20, capacity: int = 1024):
        self.baselines = baselines
        self._last_iv: dict[str, float] = {}
        self._ids: np.ndarray | None = None
        self._prev_iv: np.ndarray | None = None
        self._slots: dict[str, int] = {}
        self._slot_ids: np.ndarray | None = None
        self._slot_cache: np.ndarray | None = None
        self._spread = _Window(capacity, window)
        self._capacity = capacity

    def _slots_for(self, ids: np.ndarray) -> np.ndarray:
        if self._slot_ids is not None and len(self._slot_ids) == len(ids) and np.array_equal(self._slot_ids, ids):
            return self._slot_cache
        slots = np.array([self._slots.setdefault(sid, len(self._slots)) for sid in ids.tolist()], dtype=np.int64)
        if len(self._slots) > self._capacity:
            self._capacity = max(len(self._slots), 2 * self._capacity)
            self._spread.grow(self._capacity)
        self._slot_ids, self._slot_cache = ids.copy(), slots
        return slots

    def update(self, snapshot: ChainSnapshot, signals: BaselineSignals | None = None) -> SnapshotFeatures:
        if signals is None:
            if self.baselines is None:
                self.baselines = ChainBaselines()
            signals = self.baselines.update(snapshot)
        good = snapshot.flags == 0
        iv = snapshot.iv.astype(np.float64)
        prev = self._previous_iv(snapshot.security_id)
        with np.errstate(invalid="ignore", divide="ignore"):
            iv_change = np.where(np.isfinite(prev), iv - prev, 0.0)
            ratio = np.where(
                signals.volume_mean > 0,
                signals.volume_delta / signals.volume_mean,
                np.where(signals.volume_delta > 0, RATIO_CAP, 0.0),
            )
            mid = signals.mid
            spread = np.where(mid > 0, (snapshot.ask - snapshot.bid) / mid * 100.0, 0.0)
        slots = self._slots_for(snapshot.security_id)
        change = signals.mid_change_pct
        s_mean, _, _ = self._spread.stats(slots)
        with np.errstate(invalid="ignore", divide="ignore"):
            spread_rel = np.where(s_mean > 0, spread / s_mean, 1.0)
        learn = good & np.isfinite(spread)
        self._spread.push(slots[learn], spread[learn])
        matrix = np.column_stack(
            (
                signed_log(signals.volume_z),
                signed_log(np.clip(ratio, -RATIO_CAP, RATIO_CAP)),
                change,
                signed_log(signals.oi_z),
                signed_log(spread_rel),
                iv_change,
            )
        )
        matrix = np.nan_to_num(matrix, nan=0.0, posinf=0.0, neginf=0.0)
        self._remember_iv(snapshot.security_id, np.where(good & np.isfinite(iv), iv, prev))
        return SnapshotFeatures(matrix, good & signals.ready)

    def _same_ids(self, ids: np.ndarray) -> bool:
        # The same contracts in the same order as last time is the common case:
        # one array comparison instead of a dictionary look-up per contract.
        return self._ids is not None and len(self._ids) == len(ids) and bool(np.array_equal(self._ids, ids))

    def _previous_iv(self, ids: np.ndarray) -> np.ndarray:
        if self._same_ids(ids):
            return self._prev_iv
        if self._ids is not None:
            self._last_iv.update(zip(self._ids.tolist(), self._prev_iv.tolist(), strict=True))
        last = self._last_iv
        return np.array([last.get(sid, np.nan) for sid in ids.tolist()], dtype=np.float64)

    def _remember_iv(self, ids: np.ndarray, iv: np.ndarray) -> None:
        if not self._same_ids(ids):
            self._ids = ids.copy()
        self._prev_iv = iv
