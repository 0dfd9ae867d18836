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
* mid price: the change from the mid as it stood ``jump_window_s`` (2 s)
  ago to the mid now. Every observation of a contract's mid is kept — chain
  snapshots and, where the feed gives them, the one-second candidate quotes
  (``update_quotes``) — and "the mid 2 s ago" is the latest observation at or
  before now − 2 s. With one-second quotes that is a true 2-second window;
  with 3-second chains alone it is the previous snapshot, 3 s back, the finest
  such a feed can measure. Jump = change ≥ ``jump_pct`` %, upward only (an
  informed buyer lifts the contract's price; a fall is not the signal).
* OI: per-interval OI change; its mean and sample std over ``oi_window_s``
  (240 s), for the features. The confirmation itself is judged on the OI
  change since the signal against σ of the contract's OI changes over the
  same elapsed horizon on the session so far (``oi_horizon_stats``: running
  sums of the k-interval changes, k = 1 … oi_window_s / interval, per
  contract, from the session's first snapshot).

Gaps: the first snapshot after a gap (up to ``recover_s``, 60 s) is scored
against the pre-gap baseline with the interval scaled (mean × r, σ × √r for
r = elapsed / interval), and joins the baseline as its per-interval
equivalent, so flow that arrives with the recovering feed is detected. A
contract unseen for longer starts afresh.

Rows flagged by validation (``snapshot.flags != 0``) are neither learned from
nor signalled.

Each underlying's chain keeps the same contracts snapshot after snapshot, so
their slots are one contiguous run: the buffers are then read and written as
slices of that run (views) rather than gathered and scattered row by row. The
arithmetic on every element is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from marketdata.feeds.base import ChainSnapshot, array_key

Z_CAP = 1e6


def _rows(n: int) -> np.ndarray:
    """0 … n-1, to pair each row of a block with its own column."""
    rows = _ROWS.get(n)
    if rows is None:
        rows = _ROWS[n] = np.arange(n)
    return rows


_ROWS: dict[int, np.ndarray] = {}


def _chosen(slots: np.ndarray, block: np.ndarray | slice, keep: np.ndarray):
    """The slots of the rows ``keep`` selects, and those rows: the whole block (a view)
    when it selects every row, else the selected slots."""
    return (block, slice(None)) if keep.all() else (slots[keep], keep)


def _mean_std(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample std from count, sum and sum of squares (0 where too few values).
    Where the count is too small the quotient is discarded, so its denominator is
    replaced by 1: nothing divides by zero, and the kept quotients are unchanged."""
    n1 = np.maximum(n, 1.0)
    mean = np.where(n > 0, s / n1, 0.0)
    var = np.where(n > 1, (ss - s * s / n1) / np.maximum(n - 1, 1.0), 0.0)
    return mean, np.sqrt(np.maximum(var, 0.0))


def _z(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x - mean) / std, capped at ±Z_CAP. Against a window with no variance any rise is
    "infinitely" unusual: Z_CAP (features stay finite for JSON and the database)."""
    spread = std > 0
    z = np.where(spread, (x - mean) / np.where(spread, std, 1.0), np.where(x > mean, Z_CAP, 0.0))
    return np.minimum(np.maximum(z, -Z_CAP), Z_CAP)


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
        return (*_mean_std(n, s, ss), n)

    def push(self, slots: np.ndarray | slice, values: np.ndarray) -> None:
        """``slots``: an array of slots, or a slice of contiguous ones (one row per value)."""
        if len(values) == 0:
            return
        pos = self.pos[slots]
        full = self.count[slots] >= self.size
        if isinstance(slots, slice):
            block, at = self.values[slots], (_rows(len(values)), pos)
            old = np.where(full, block[at], 0.0)
            block[at] = values
        else:
            old = np.where(full, self.values[slots, pos], 0.0)
            self.values[slots, pos] = values
        self.sum[slots] += values - old
        self.sumsq[slots] += values * values - old * old
        self.pos[slots] = (pos + 1) % self.size
        self.count[slots] = np.minimum(self.count[slots] + 1, self.size)


class _LagStats:
    """Per slot: the last ``lags`` values, and running sum, sum of squares and count of
    the k-step changes for every k = 1 … lags, over everything pushed so far."""

    def __init__(self, capacity: int, lags: int):
        self.lags = lags
        # history[slot, j]: the value pushed j + 1 pushes ago (shifted along on every push).
        self.history = np.zeros((capacity, lags))
        self.seen = np.zeros(capacity, dtype=np.int64)
        self.sum = np.zeros((capacity, lags))
        self.sumsq = np.zeros((capacity, lags))
        self.count = np.zeros((capacity, lags))
        self._k = np.arange(1, lags + 1)

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.seen)
        for name in ("history", "sum", "sumsq", "count"):
            setattr(self, name, np.vstack([getattr(self, name), np.zeros((extra, self.lags))]))
        self.seen = np.concatenate([self.seen, np.zeros(extra, dtype=np.int64)])

    def push(self, slots: np.ndarray | slice, values: np.ndarray) -> None:
        """``slots``: an array of slots, or a slice of contiguous ones (one row per value)."""
        if len(values) == 0:
            return
        previous = self.history[slots]
        seen = self.seen[slots]
        if seen.min() >= self.lags:  # every lag has a value (all but a contract's first pushes)
            change = values[:, None] - previous
            self.count[slots] += 1.0
        else:
            valid = seen[:, None] >= self._k[None, :]
            change = np.where(valid, values[:, None] - previous, 0.0)
            self.count[slots] += valid
        self.sum[slots] += change
        self.sumsq[slots] += change * change
        if isinstance(slots, slice):  # previous is a view of these rows: shift them in place
            previous[:, 1:] = previous[:, :-1]  # numpy copies overlapping rows as if apart
            previous[:, 0] = values
        else:
            shifted = np.empty_like(previous)
            shifted[:, 1:] = previous[:, :-1]
            shifted[:, 0] = values
            self.history[slots] = shifted
        self.seen[slots] += 1

    def stats(self, slots: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean, sample std and count of the k-step changes (k per slot, 1 … lags)."""
        k = np.clip(k, 1, self.lags) - 1
        n, s, ss = self.count[slots, k], self.sum[slots, k], self.sumsq[slots, k]
        return (*_mean_std(n, s, ss), n)


class _MidHistory:
    """The last few (time, mid) observations per slot, from chains and quotes."""

    def __init__(self, capacity: int, depth: int = 8):
        self.depth = depth
        self.t = np.full((capacity, depth), -np.inf)
        self.mid = np.full((capacity, depth), np.nan)
        self.pos = np.zeros(capacity, dtype=np.int64)

    def grow(self, capacity: int) -> None:
        extra = capacity - len(self.pos)
        self.t = np.vstack([self.t, np.full((extra, self.depth), -np.inf)])
        self.mid = np.vstack([self.mid, np.full((extra, self.depth), np.nan)])
        self.pos = np.concatenate([self.pos, np.zeros(extra, dtype=np.int64)])

    def push(self, slots: np.ndarray | slice, t: float, mids: np.ndarray) -> None:
        """``slots``: an array of slots, or a slice of contiguous ones (one row per mid)."""
        if len(mids) == 0:
            return
        pos = self.pos[slots]
        if isinstance(slots, slice):
            at = (_rows(len(mids)), pos)
            self.t[slots][at] = t
            self.mid[slots][at] = mids
        else:
            self.t[slots, pos] = t
            self.mid[slots, pos] = mids
        self.pos[slots] = (pos + 1) % self.depth

    def as_of(self, slots: np.ndarray | slice, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The latest mid observed at or before ``t`` per slot, and when (-inf: none kept)."""
        times = self.t[slots]
        eligible = np.where(times <= t, times, -np.inf)
        best = np.argmax(eligible, axis=1)
        rows = _rows(len(best))
        return self.mid[slots][rows, best], eligible[rows, best]


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
        recover_s: float = 60.0,
        capacity: int = 1024,
    ):
        self.interval_s = interval_s
        self.jump_window_s = jump_window_s
        self.recover_s = recover_s
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
        self._oi_lags = _LagStats(capacity, self.oi_n)
        self._mids = _MidHistory(capacity)
        self._last_volume = np.full(capacity, np.nan)
        self._last_oi = np.full(capacity, np.nan)
        self._last_mid = np.full(capacity, np.nan)
        self._last_time = np.full(capacity, -np.inf)
        self._cached: dict[str, tuple[bytes, np.ndarray, np.ndarray | slice]] = {}

    def set_thresholds(self, *, volume_sigma=None, volume_multiple=None, jump_pct=None, oi_sigma=None) -> None:
        if volume_sigma is not None:
            self.volume_sigma = volume_sigma
        if volume_multiple is not None:
            self.volume_multiple = volume_multiple
        if jump_pct is not None:
            self.jump_pct = jump_pct
        if oi_sigma is not None:
            self.oi_sigma = oi_sigma

    def _slots_for(self, ids: np.ndarray, cache: str = "chain") -> tuple[np.ndarray, np.ndarray | slice]:
        """The slots of ``ids``, and the same as a slice when they are one ascending run
        (then every buffer is read and written through views)."""
        key = array_key(ids)
        cached = self._cached.get(cache)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
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
        run = len(slots) > 0 and bool(np.all(np.diff(slots) == 1))
        block = slice(int(slots[0]), int(slots[0]) + len(slots)) if run else slots
        self._cached[cache] = (key, slots, block)
        return slots, block

    def slots(self, ids: np.ndarray) -> np.ndarray:
        """Slots of known contracts (-1 for one never seen)."""
        return np.array([self._slots.get(sid, -1) for sid in ids.tolist()], dtype=np.int64)

    def oi_horizon_stats(self, slots: np.ndarray, intervals: np.ndarray):
        """Mean, sample std and count of each contract's OI change over ``intervals``
        snapshots, on the session so far."""
        return self._oi_lags.stats(slots, intervals)

    def update_quotes(self, at, security_id: np.ndarray, bid: np.ndarray, ask: np.ndarray) -> None:
        """One-second quotes of some contracts: their mids join the jump window's history."""
        good = (bid > 0) & (ask >= bid) & np.isfinite(bid) & np.isfinite(ask)
        at_slots, rows = _chosen(*self._slots_for(security_id, cache="quotes"), good)
        self._mids.push(at_slots, at.timestamp(), ((bid + ask) / 2.0)[rows])

    def _grow(self, capacity: int) -> None:
        extra = capacity - self._capacity
        self._volume.grow(capacity)
        self._oi.grow(capacity)
        self._oi_lags.grow(capacity)
        self._mids.grow(capacity)
        for name in ("_last_volume", "_last_oi", "_last_mid"):
            setattr(self, name, np.concatenate([getattr(self, name), np.full(extra, np.nan)]))
        self._last_time = np.concatenate([self._last_time, np.full(extra, -np.inf)])
        self._capacity = capacity

    def update(self, snapshot: ChainSnapshot) -> BaselineSignals:
        slots, block = self._slots_for(snapshot.security_id)
        good = snapshot.flags == 0
        now = snapshot.exchange_time.timestamp()

        # Differences only against the contract's previous snapshot. A snapshot after
        # a gap (or a contract back in the ±N window) up to recover_s later is scored
        # with its interval scaled; one unseen for longer starts afresh rather than
        # reporting its whole absence as one interval.
        elapsed = now - self._last_time[block]
        consecutive = elapsed <= self.recover_s + 0.5
        scale = np.where(consecutive, np.maximum(elapsed / self.interval_s, 1.0), 1.0)
        # Within 1.5 intervals counts as one (the usual case: exact per-interval arithmetic).
        scale = np.where(scale > 1.5, scale, 1.0)
        root = np.sqrt(scale)
        volume = snapshot.volume.astype(np.float64)
        dv = np.where(consecutive, volume - self._last_volume[block], np.nan)
        v_mean, v_std, v_n = self._volume.stats(block)
        ready = good & (v_n >= self.volume_n) & np.isfinite(dv)
        g_mean, g_std = v_mean * scale, v_std * root
        v_z = _z(dv, g_mean, g_std)
        spike = ready & (v_z > self.volume_sigma) & (dv > self.volume_multiple * g_mean)

        mid = (snapshot.bid + snapshot.ask) / 2.0
        then_mid, then_t = self._mids.as_of(block, now - self.jump_window_s)
        recent = (now - then_t) <= self.recover_s + self.jump_window_s + 0.5
        before = recent & (then_mid > 0)
        change = np.where(before, (mid / np.where(before, then_mid, 1.0) - 1.0) * 100.0, 0.0)
        change = np.where(np.isfinite(change), change, 0.0)
        jump = good & recent & (change >= self.jump_pct)

        oi = snapshot.oi.astype(np.float64)
        doi = np.where(consecutive, oi - self._last_oi[block], np.nan)
        o_mean, o_std, o_n = self._oi.stats(block)
        og_mean, og_std = o_mean * scale, o_std * root
        o_z = _z(doi, og_mean, og_std)
        oi_ready = good & (o_n >= self.oi_min) & np.isfinite(doi)
        confirm = oi_ready & (o_z > self.oi_sigma)

        # Learn from good rows only; a gap's change joins as its per-interval equivalent.
        # (The usual case: every row is good, and each buffer is written through the block.)
        learn, rows = _chosen(slots, block, good & np.isfinite(dv))
        self._volume.push(learn, (dv / scale)[rows])
        learn, rows = _chosen(slots, block, good & np.isfinite(doi))
        self._oi.push(learn, (doi / scale)[rows])
        # The horizon statistics count snapshots; a contract that was away starts its lags afresh.
        fresh = good & ~consecutive
        if fresh.any():
            self._oi_lags.seen[slots[fresh]] = 0
        g, kept = _chosen(slots, block, good)
        self._oi_lags.push(g, oi[kept])
        self._mids.push(g, now, mid[kept])
        self._last_volume[g] = volume[kept]
        self._last_oi[g] = oi[kept]
        self._last_mid[g] = mid[kept]
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
