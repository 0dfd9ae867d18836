"""Rolling baselines for every contract at once, updated incrementally.

One slot per contract (by security id, assigned on first sight), ring
buffers holding the last W per-interval values, and running sums and sums of
squares, so each update is O(contracts) with no re-windowing. Volumes and OI
are integers, so the running sums are exact in float64 and the statistics
match a pandas rolling window to rounding.

Statistics for an observation use the window *before* it (the new value is
judged against its past, then joins it):

* volume: per-interval volume (difference of cumulative volume); its mean and
  sample standard deviation over ``volume_window_s`` (1 minute). Spike =
  z > ``volume_sigma`` AND volume > ``volume_multiple`` × the mean.
* mid price: change since the contract's previous snapshot, counted when that
  snapshot is at most ``max(jump_window_s, interval_s)`` old (+0.5 s slack).
  With 3-second chains this is the change from one snapshot to the next, the
  finest a 3-second feed can measure "within 2 s". Jump = change ≥ ``jump_pct`` %.
* OI: per-interval OI change; its mean and sample std over ``oi_window_s``
  (240 s). Confirmation = z > ``oi_sigma``.

Rows flagged by validation (``snapshot.flags != 0``) are neither learned from
nor signalled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marketdata.feeds.base import ChainSnapshot

Z_CAP = 1e6


@dataclass(slots=True)
class BaselineSignals:
    volume_delta: np.ndarray
    volume_mean: np.ndarray
    volume_std: np.ndarray
    volume_z: np.ndarray
    volume_spike: np.ndarray
    mid: np.ndarray
    mid_change_pct: np.ndarray
    jump: np.ndarray
    oi_change: np.ndarray
    oi_std: np.ndarray
    oi_z: np.ndarray
    oi_confirm: np.ndarray
    ready: np.ndarray


class _Window:
    """Ring buffers of the last ``size`` values per slot, with running sums."""

    def __init__(self, capacity: int, size: int):
        self.size = size
        self.values = np.zeros((capacity, size))
        self.pos = np.zeros(capacity, dtype=np.int64)
        self.count = np.zeros(capacity, dtype=np.int64)
        self.sum = np.zeros(capacity)
        self.sumsq = np.zeros(capacity)

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.pos)
        self.values = np.vstack([self.values, np.zeros((extra, self.size))])
        self.pos = np.concatenate([self.pos, np.zeros(extra, dtype=np.int64)])
        self.count = np.concatenate([self.count, np.zeros(extra, dtype=np.int64)])
        self.sum = np.concatenate([self.sum, np.zeros(extra)])
        self.sumsq = np.concatenate([self.sumsq, np.zeros(extra)])

    def stats(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.count[slots].astype(np.float64)
        s, ss = self.sum[slots], self.sumsq[slots]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, s / n, 0.0)
            var = np.where(n > 1, (ss - s * s / n) / (n - 1), 0.0)
        return mean, np.sqrt(np.maximum(var, 0.0)), n

    def push(self, slots: np.ndarray, values: np.ndarray) -> None:
        if len(slots) == 0:
            return
        pos = self.pos[slots]
        full = self.count[slots] >= self.size
        old = np.where(full, self.values[slots, pos], 0.0)
        self.values[slots, pos] = values
        self.sum[slots] += values - old
        self.sumsq[slots] += values * values - old * old
        self.pos[slots] = (pos + 1) % self.size
        self.count[slots] = np.minimum(self.count[slots] + 1, self.size)


class ChainBaselines:
    def __init__(
        self,
        *,
        volume_window_s: float = 60.0,
        jump_window_s: float = 2.0,
        oi_window_s: float = 240.0,
        interval_s: float = 3.0,
        volume_sigma: float = 3.0,
        volume_multiple: float = 5.0,
        jump_pct: float = 0.15,
        oi_sigma: float = 1.5,
        capacity: int = 1024,
    ):
        self.interval_s = interval_s
        self.jump_window_s = jump_window_s
        self.volume_n = max(int(round(volume_window_s / interval_s)), 2)
        self.oi_n = max(int(round(oi_window_s / interval_s)), 2)
        self.oi_min = min(self.volume_n, self.oi_n)
        self.volume_sigma = volume_sigma
        self.volume_multiple = volume_multiple
        self.jump_pct = jump_pct
        self.oi_sigma = oi_sigma
        self._slots: dict[str, int] = {}
        self._capacity = capacity
        self._volume = _Window(capacity, self.volume_n)
        self._oi = _Window(capacity, self.oi_n)
        self._last_volume = np.full(capacity, np.nan)
        self._last_oi = np.full(capacity, np.nan)
        self._last_mid = np.full(capacity, np.nan)
        self._last_time = np.full(capacity, -np.inf)
        self._cached_ids: np.ndarray | None = None
        self._cached_slots: np.ndarray | None = None

    def set_thresholds(self, *, volume_sigma=None, volume_multiple=None, jump_pct=None, oi_sigma=None) -> None:
        if volume_sigma is not None:
            self.volume_sigma = volume_sigma
        if volume_multiple is not None:
            self.volume_multiple = volume_multiple
        if jump_pct is not None:
            self.jump_pct = jump_pct
        if oi_sigma is not None:
            self.oi_sigma = oi_sigma

    def _slots_for(self, ids: np.ndarray) -> np.ndarray:
        cached = self._cached_ids
        if cached is not None and len(cached) == len(ids) and np.array_equal(cached, ids):
            return self._cached_slots
        slots = np.empty(len(ids), dtype=np.int64)
        table = self._slots
        for i, sid in enumerate(ids.tolist()):
            slot = table.get(sid)
            if slot is None:
                slot = len(table)
                table[sid] = slot
            slots[i] = slot
        if len(table) > self._capacity:
            self._grow(max(len(table), 2 * self._capacity))
        self._cached_ids, self._cached_slots = ids.copy(), slots
        return slots

    def _grow(self, capacity: int) -> None:
        extra = capacity - self._capacity
        self._volume.grow(capacity)
        self._oi.grow(capacity)
        for name in ("_last_volume", "_last_oi", "_last_mid"):
            setattr(self, name, np.concatenate([getattr(self, name), np.full(extra, np.nan)]))
        self._last_time = np.concatenate([self._last_time, np.full(extra, -np.inf)])
        self._capacity = capacity

    def update(self, snapshot: ChainSnapshot) -> BaselineSignals:
        slots = self._slots_for(snapshot.security_id)
        good = snapshot.flags == 0
        now = snapshot.exchange_time.timestamp()

        # Differences only against the contract's previous snapshot: a contract
        # that left the ±N window and came back starts afresh, rather than
        # reporting its whole absence as one interval.
        consecutive = (now - self._last_time[slots]) <= 1.5 * self.interval_s + 0.5
        volume = snapshot.volume.astype(np.float64)
        dv = np.where(consecutive, volume - self._last_volume[slots], np.nan)
        v_mean, v_std, v_n = self._volume.stats(slots)
        ready = good & (v_n >= self.volume_n) & np.isfinite(dv)
        with np.errstate(invalid="ignore", divide="ignore"):
            # Against a window with no variance any rise is "infinitely" unusual;
            # cap it so features stay finite (JSON, the database).
            v_z = np.where(v_std > 0, (dv - v_mean) / v_std, np.where(dv > v_mean, Z_CAP, 0.0))
        v_z = np.clip(v_z, -Z_CAP, Z_CAP)
        spike = ready & (v_z > self.volume_sigma) & (dv > self.volume_multiple * v_mean)

        mid = (snapshot.bid + snapshot.ask) / 2.0
        last_mid = self._last_mid[slots]
        recent = (now - self._last_time[slots]) <= max(self.jump_window_s, self.interval_s) + 0.5
        with np.errstate(invalid="ignore", divide="ignore"):
            change = np.where(recent & (last_mid > 0), (mid / last_mid - 1.0) * 100.0, 0.0)
        change = np.where(np.isfinite(change), change, 0.0)
        jump = good & recent & (np.abs(change) >= self.jump_pct)

        oi = snapshot.oi.astype(np.float64)
        doi = np.where(consecutive, oi - self._last_oi[slots], np.nan)
        o_mean, o_std, o_n = self._oi.stats(slots)
        with np.errstate(invalid="ignore", divide="ignore"):
            o_z = np.where(o_std > 0, (doi - o_mean) / o_std, np.where(doi > o_mean, Z_CAP, 0.0))
        o_z = np.clip(o_z, -Z_CAP, Z_CAP)
        oi_ready = good & (o_n >= self.oi_min) & np.isfinite(doi)
        confirm = oi_ready & (o_z > self.oi_sigma)

        # Learn from good rows only.
        learn = good & np.isfinite(dv)
        self._volume.push(slots[learn], dv[learn])
        learn_oi = good & np.isfinite(doi)
        self._oi.push(slots[learn_oi], doi[learn_oi])
        g = slots[good]
        self._last_volume[g] = volume[good]
        self._last_oi[g] = oi[good]
        self._last_mid[g] = mid[good]
        self._last_time[g] = now

        return BaselineSignals(
            volume_delta=np.where(np.isfinite(dv), dv, 0.0),
            volume_mean=v_mean,
            volume_std=v_std,
            volume_z=np.where(ready, v_z, 0.0),
            volume_spike=spike,
            mid=mid,
            mid_change_pct=change,
            jump=jump,
            oi_change=np.where(np.isfinite(doi), doi, 0.0),
            oi_std=o_std,
            oi_z=np.where(oi_ready, o_z, 0.0),
            oi_confirm=confirm,
            ready=ready,
        )
