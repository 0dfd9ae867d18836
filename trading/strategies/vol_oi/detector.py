"""Volume-OI detection on the rolling baselines (pure: numpy, no ORM).

Entry: on one option, a volume spike (above ``volume_spike_sigma`` σ AND above
``volume_spike_multiple`` × the 1-minute average) together with a mid-price
jump up of at least ``jump_pct`` %, on a strike within ``max_strike_offset``
steps of ATM and priced at least ``min_premium``. Confirmation: an OI change
above ``oi_sigma`` σ on that option within ``oi_window_s`` after the spike.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from marketdata.anomaly.features import FeatureTracker
from marketdata.baselines import ChainBaselines
from marketdata.feeds.base import ChainSnapshot
from trading.strategies.vol_oi.config import VolOiConfig


@dataclass(frozen=True, slots=True)
class Detection:
    kind: str  # "entry" | "confirm"
    underlying: str
    security_id: str
    strike: float
    option_type: int
    at: dt.datetime
    mid: float
    bid: float
    ask: float
    delta: float
    features: dict


class VolOiDetector:
    def __init__(self, config: VolOiConfig):
        self.config = config
        self.baselines: dict[str, ChainBaselines] = {}
        self.spikes: dict[str, dt.datetime] = {}  # security id -> when it spiked, awaiting OI
        self.scorers: dict = {}  # underlying -> the live anomaly model (marketdata.anomaly.model.AnomalyScorer)
        self.trackers: dict[str, FeatureTracker] = {}

    def set_scorers(self, scorers: dict) -> None:
        """The live anomaly models, by underlying (the engine loads and verifies them)."""
        self.scorers = dict(scorers)

    def configure(self, config: VolOiConfig) -> None:
        self.config = config
        for baselines in self.baselines.values():
            baselines.set_thresholds(
                volume_sigma=config.volume_spike_sigma,
                volume_multiple=config.volume_spike_multiple,
                jump_pct=config.jump_pct,
                oi_sigma=config.oi_sigma,
            )

    def _baselines(self, underlying: str) -> ChainBaselines:
        baselines = self.baselines.get(underlying)
        if baselines is None:
            c = self.config
            baselines = ChainBaselines(
                volume_window_s=c.volume_window_s,
                jump_window_s=c.jump_window_s,
                oi_window_s=c.oi_window_s,
                volume_sigma=c.volume_spike_sigma,
                volume_multiple=c.volume_spike_multiple,
                jump_pct=c.jump_pct,
                oi_sigma=c.oi_sigma,
            )
            self.baselines[underlying] = baselines
        return baselines

    def on_snapshot(self, snapshot: ChainSnapshot) -> list[Detection]:
        if snapshot.underlying not in self.config.underlyings or len(snapshot) == 0:
            return []
        s = self._baselines(snapshot.underlying).update(snapshot)
        anomaly = self._anomaly(snapshot, s)
        strikes = np.unique(snapshot.strike)
        step = float(np.min(np.diff(strikes))) if len(strikes) > 1 else 0.0
        near = np.abs(snapshot.strike - snapshot.underlying_ltp) <= (self.config.max_strike_offset + 0.5) * step
        found: list[Detection] = []
        entries = s.volume_spike & s.jump & (s.mid_change_pct > 0) & near & (s.mid >= self.config.min_premium)
        for i in np.flatnonzero(entries).tolist():
            score = anomaly(i)
            if self.config.min_anomaly_score > 0 and (score is None or score < self.config.min_anomaly_score):
                continue
            sid = str(snapshot.security_id[i])
            self.spikes[sid] = snapshot.exchange_time
            found.append(self._detection("entry", snapshot, s, i, score))
        horizon = dt.timedelta(seconds=self.config.oi_window_s)
        for i in np.flatnonzero(s.oi_confirm).tolist():
            sid = str(snapshot.security_id[i])
            spiked = self.spikes.get(sid)
            if spiked is not None and dt.timedelta(0) < snapshot.exchange_time - spiked <= horizon:
                found.append(self._detection("confirm", snapshot, s, i, anomaly(i)))
                del self.spikes[sid]
        for sid, spiked in list(self.spikes.items()):
            if snapshot.exchange_time - spiked > horizon:
                del self.spikes[sid]
        return found

    def _anomaly(self, snapshot: ChainSnapshot, s):
        """Feed the underlying's feature tracker (it needs every snapshot) and
        return a look-up of row i's score, computed only for rows asked about."""
        scorer = self.scorers.get(snapshot.underlying)
        if scorer is None:
            return lambda i: None
        tracker = self.trackers.get(snapshot.underlying)
        if tracker is None:
            tracker = self.trackers[snapshot.underlying] = FeatureTracker()
        features = tracker.update(snapshot, s)

        def score(i: int) -> float | None:
            if not features.usable[i]:
                return None
            return round(float(scorer.score(features.matrix[i : i + 1])[0]), 4)

        return score

    def _detection(self, kind: str, snapshot: ChainSnapshot, s, i: int, score: float | None = None) -> Detection:
        features = {
            "volume_delta": float(s.volume_delta[i]),
            "volume_mean": round(float(s.volume_mean[i]), 4),
            "volume_z": round(float(s.volume_z[i]), 4),
            "mid_change_pct": round(float(s.mid_change_pct[i]), 4),
            "oi_change": float(s.oi_change[i]),
            "oi_z": round(float(s.oi_z[i]), 4),
            "underlying_ltp": snapshot.underlying_ltp,
        }
        scorer = self.scorers.get(snapshot.underlying)
        if scorer is not None:
            features["anomaly_score"] = score
            features["anomaly_model"] = scorer.version
        return Detection(
            kind,
            snapshot.underlying,
            str(snapshot.security_id[i]),
            float(snapshot.strike[i]),
            int(snapshot.option_type[i]),
            snapshot.exchange_time,
            float(s.mid[i]),
            float(snapshot.bid[i]),
            float(snapshot.ask[i]),
            float(snapshot.delta[i]),
            features,
        )
