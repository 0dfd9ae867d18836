"""Validation of feed data: per-contract flags, a quality score, feed health.

Bad contracts are masked (a bit in ``snapshot.flags``), never dropped, so one
crossed quote does not throw away a whole chain. Every rejected item is
counted by kind and logged. ``FeedHealth`` is what the risk gate reads: no
new entries while data is stale (chain older than 6 s, LTP older than 3 s).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from marketdata.feeds.base import ChainSnapshot, LtpTick, array_key

log = logging.getLogger(__name__)

CROSSED = 1 << 0
NEGATIVE = 1 << 1
ZERO = 1 << 2
NAN = 1 << 3
OUTLIER = 1 << 4
STALE = 1 << 5
FLAG_NAMES = {CROSSED: "crossed", NEGATIVE: "negative", ZERO: "zero", NAN: "nan", OUTLIER: "outlier", STALE: "stale"}


@dataclass(frozen=True, slots=True)
class ValidationReport:
    rows: int
    bad_rows: int
    quality: float
    counts: dict[str, int]  # per flag kind (and missing_strikes), this snapshot
    missing_strikes: int


class ChainValidator:
    def __init__(
        self,
        *,
        stale_after_s: float = 6.0,
        outlier_factor: float = 3.0,
        outlier_min_move: float = 1.0,
        strike_steps: dict | None = None,
    ):
        self.stale_after_s = stale_after_s
        # An outlier multiplies or divides the mid by more than outlier_factor
        # since the last quote, and moves it by more than outlier_min_move
        # rupees (so a ₹0.05 wing quoted at ₹0.20 is not an outlier).
        self.outlier_log = float(np.log(outlier_factor))
        self.outlier_min_move = outlier_min_move
        self.strike_steps = strike_steps or {}  # underlying -> strike step (from the instrument master)
        self.counts: Counter[str] = Counter()
        self._last_mid: dict[str, float] = {}
        self._strikes: dict[str, tuple[bytes, int]] = {}  # underlying -> (its last strikes, missing among them)

    def validate(self, snapshot: ChainSnapshot, now: dt.datetime) -> ValidationReport:
        bid, ask, last = snapshot.bid, snapshot.ask, snapshot.last_price
        flags = np.zeros(len(snapshot), dtype=np.uint16)
        with np.errstate(invalid="ignore"):
            nan = ~np.isfinite(bid) | ~np.isfinite(ask) | ~np.isfinite(last)
            flags[nan] |= NAN
            flags[(bid < 0) | (ask < 0) | (last < 0)] |= NEGATIVE
            flags[~nan & ((bid == 0) | (ask == 0))] |= ZERO
            flags[~nan & (bid > ask)] |= CROSSED
            mid = (bid + ask) / 2.0
        ids = snapshot.security_id
        id_list = ids.tolist()
        last_mid = self._last_mid.get
        previous = np.array([last_mid(sid, np.nan) for sid in id_list])
        # A remembered mid is positive (or NaN: none), so the ratio never divides by zero; a row
        # whose own mid is not positive is flagged already, and its log is not taken.
        log_move = np.abs(np.log(np.where((flags == 0) & (mid > 0), mid, np.nan) / previous))
        outlier = (flags == 0) & (log_move > self.outlier_log) & (np.abs(mid - previous) > self.outlier_min_move)
        flags[outlier] |= OUTLIER
        # Remember every sane quote, outliers included: a level that persists is
        # the market, and only the first quote at it is flagged.
        sane = (flags & (NAN | NEGATIVE | ZERO | CROSSED)) == 0
        if sane.all():
            self._last_mid.update(zip(id_list, mid.tolist(), strict=True))
        else:
            self._last_mid.update(zip(ids[sane].tolist(), mid[sane].tolist(), strict=True))
        age = (now - snapshot.exchange_time).total_seconds()
        if age > self.stale_after_s:
            flags |= STALE
        good = flags == 0

        if flags.any():
            counts = {name: int(np.count_nonzero(flags & bit)) for bit, name in FLAG_NAMES.items()}
            counts = {k: v for k, v in counts.items() if v}
        else:
            counts = {}
        missing = self._missing_strikes(snapshot)
        if missing:
            counts["missing_strikes"] = missing
        snapshot.flags = flags
        bad = int(np.count_nonzero(flags))
        expected_rows = len(snapshot) + 2 * missing
        snapshot.quality = (len(snapshot) - bad) / expected_rows if expected_rows else 0.0
        if counts:
            self.counts.update(counts)
            log.warning(
                "chain rows rejected",
                extra={
                    "underlying": snapshot.underlying,
                    "feed_seq": snapshot.seq,
                    "rejected": counts,
                    "security_ids": ids[~good].tolist()[:20],
                    "age_s": round(age, 3),
                },
            )
        return ValidationReport(len(snapshot), bad, snapshot.quality, counts, missing)

    def _missing_strikes(self, snapshot: ChainSnapshot) -> int:
        step = self.strike_steps.get(snapshot.underlying)
        if not step or len(snapshot) == 0:
            return 0
        # A chain's strikes change only when the ATM window moves: counted once per change.
        key = array_key(snapshot.strike)
        known = self._strikes.get(snapshot.underlying)
        if known is not None and known[0] == key:
            return known[1]
        strikes = np.unique(snapshot.strike)
        expected = int(round((strikes[-1] - strikes[0]) / float(step))) + 1
        missing = max(expected - len(strikes), 0)
        self._strikes[snapshot.underlying] = (key, missing)
        return missing

    def validate_ltp(self, tick: LtpTick, now: dt.datetime, *, stale_after_s: float = 3.0) -> bool:
        problem = None
        if not math.isfinite(tick.ltp):
            problem = "nan"
        elif tick.ltp < 0:
            problem = "negative"
        elif tick.ltp == 0:
            problem = "zero"
        elif (now - tick.exchange_time).total_seconds() > stale_after_s:
            problem = "stale"
        if problem is None:
            return True
        self.counts[f"ltp_{problem}"] += 1
        log.warning("ltp tick rejected", extra={"symbol": tick.symbol, "problem": problem, "feed_seq": tick.seq})
        return False


class FeedHealth:
    """Freshness of the feed, read by the risk gate and the dashboards."""

    def __init__(self, *, chain_stale_s: float = 6.0, ltp_stale_s: float = 3.0):
        self.chain_stale_s = chain_stale_s
        self.ltp_stale_s = ltp_stale_s
        self.last_chain: dict[str, dt.datetime] = {}
        self.last_ltp: dict[str, dt.datetime] = {}
        self.quality: dict[str, float] = {}
        self.rejected: Counter[str] = Counter()

    def observe_chain(self, snapshot: ChainSnapshot, now: dt.datetime, report: ValidationReport | None = None) -> None:
        if report is None or report.bad_rows < report.rows:
            self.last_chain[snapshot.underlying] = snapshot.exchange_time
        self.quality[snapshot.underlying] = snapshot.quality
        if report is not None:
            self.rejected.update(report.counts)

    def observe_ltp(self, tick: LtpTick, now: dt.datetime, ok: bool = True) -> None:
        if ok and tick.kind != "OPT":  # an option that does not trade for a while is not a stale feed
            self.last_ltp[tick.symbol] = tick.exchange_time
        elif ok:
            return
        else:
            self.rejected["ltp"] += 1

    def ages(self, now: dt.datetime) -> tuple[dict[str, float], dict[str, float]]:
        chain = {k: (now - v).total_seconds() for k, v in self.last_chain.items()}
        ltp = {k: (now - v).total_seconds() for k, v in self.last_ltp.items()}
        return chain, ltp

    def is_stale(self, now: dt.datetime, *, chain_s: float | None = None, ltp_s: float | None = None) -> bool:
        chain_s = self.chain_stale_s if chain_s is None else chain_s
        ltp_s = self.ltp_stale_s if ltp_s is None else ltp_s
        chain, ltp = self.ages(now)
        if not chain or not ltp:
            return True
        index_ltp = {k: v for k, v in ltp.items() if not k.endswith("-FUT") and k != "INDIAVIX"} or ltp
        return max(chain.values()) > chain_s or max(index_ltp.values()) > ltp_s

    def as_dict(self, now: dt.datetime) -> dict:
        chain, ltp = self.ages(now)
        return {
            "stale": self.is_stale(now),
            "chain_age_s": {k: round(v, 2) for k, v in chain.items()},
            "ltp_age_s": {k: round(v, 2) for k, v in ltp.items()},
            "quality": {k: round(v, 4) for k, v in self.quality.items()},
            "rejected": dict(self.rejected),
        }
