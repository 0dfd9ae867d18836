"""Volume-OI detection on the rolling baselines (pure: numpy, no ORM).

Entry: on one option, a volume spike (above ``volume_spike_sigma`` σ AND above
``volume_spike_multiple`` × the 1-minute average) together with a mid-price
jump up of at least ``jump_pct`` %, on a strike within ``max_strike_offset``
steps of ATM and priced at least ``min_premium``. The jump is the mid's rise
over the last ``jump_window_s`` seconds (see ``marketdata.baselines``: a true
2-second window on the one-second candidate quotes, the previous snapshot on a
chain-only feed).

Confirmation: at any snapshot within ``oi_window_s`` of the signal, the
option's OI change since the signal (a build-up: OI up) exceeds ``oi_sigma`` σ
of that option's OI changes over the same elapsed horizon on the session so
far. Scoring the cumulative build against its own horizon's spread is what
makes it mean something: each 3-second change scored alone would cross 1.5σ
by chance within 80 tries for almost every signal. A horizon's σ is its own
once enough independent changes of that horizon lie behind it
(``MIN_INDEPENDENT_CHANGES``), a random walk's σ₁·√k before. Even with the
exact σ, a calm random walk crosses 1.5σ at one of the 80 looks of 240 s for
about 36 % of signals: that is the rule's own false-confirmation rate
(``benchmarks/detector.py`` reports it as ``noise_confirm_floor``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from marketdata.anomaly.features import FeatureTracker
from marketdata.baselines import Z_CAP, ChainBaselines
from marketdata.feeds.base import ChainSnapshot, array_key
from trading.strategies.vol_oi.config import VolOiConfig

# Independent changes behind a σ. The session's k-interval changes overlap (consecutive
# ones share k - 1 intervals), so n of them carry only about n / k independent ones: early
# in the session their own spread is far too narrow (ten 80-interval changes are nearly the
# same number) and pure noise "confirmed". A horizon's own σ is used once it rests on this
# many independent changes (n ≥ this × k); before that, σ₁·√k (a random walk's spread over
# k intervals, from the one-interval changes).
MIN_INDEPENDENT_CHANGES = 10


@dataclass(slots=True)
class Pending:
    """A signal awaiting OI confirmation."""

    at: dt.datetime
    oi: float  # the option's OI at the signal


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
        self.spikes: dict[str, Pending] = {}  # security id -> the signal awaiting OI confirmation
        self.scorers: dict = {}  # underlying -> the live anomaly model (marketdata.anomaly.model.AnomalyScorer)
        self.trackers: dict[str, FeatureTracker] = {}
        self._steps: dict[str, tuple[bytes, float]] = {}  # underlying -> (its last strikes, their step)

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
                interval_s=c.interval_s,
                jump_window_s=c.jump_window_s,
                oi_window_s=c.oi_window_s,
                volume_sigma=c.volume_spike_sigma,
                volume_multiple=c.volume_spike_multiple,
                jump_pct=c.jump_pct,
                oi_sigma=c.oi_sigma,
            )
            self.baselines[underlying] = baselines
        return baselines

    def on_quotes(self, quotes) -> None:
        """One-second candidate quotes: the mids the 2-second jump window is measured on."""
        if quotes.underlying not in self.config.underlyings or len(quotes) == 0:
            return
        self._baselines(quotes.underlying).update_quotes(
            quotes.exchange_time, quotes.security_id, quotes.bid, quotes.ask
        )

    def on_snapshot(self, snapshot: ChainSnapshot) -> list[Detection]:
        if snapshot.underlying not in self.config.underlyings or len(snapshot) == 0:
            return []
        baselines = self._baselines(snapshot.underlying)
        confirmations = self._confirmations(snapshot, baselines)
        s = baselines.update(snapshot)
        anomaly = self._anomaly(snapshot, s)
        step = self._strike_step(snapshot)
        near = np.abs(snapshot.strike - snapshot.underlying_ltp) <= (self.config.max_strike_offset + 0.5) * step
        found: list[Detection] = []
        entries = s.volume_spike & s.jump & (s.mid_change_pct > 0) & near & (s.mid >= self.config.min_premium)
        for i in np.flatnonzero(entries).tolist():
            score = anomaly(i)
            if self.config.min_anomaly_score > 0 and (score is None or score < self.config.min_anomaly_score):
                continue
            sid = str(snapshot.security_id[i])
            self.spikes[sid] = Pending(snapshot.exchange_time, float(snapshot.oi[i]))
            found.append(self._detection("entry", snapshot, s, i, score))
        for i, features in confirmations:
            found.append(self._detection("confirm", snapshot, s, i, anomaly(i), features))
        horizon = dt.timedelta(seconds=self.config.oi_window_s)
        for sid, pending in list(self.spikes.items()):
            if snapshot.exchange_time - pending.at > horizon:
                del self.spikes[sid]
        return found

    def _strike_step(self, snapshot: ChainSnapshot) -> float:
        """The chain's strike step (its smallest gap), found again only when its strikes change."""
        key = array_key(snapshot.strike)
        known = self._steps.get(snapshot.underlying)
        if known is not None and known[0] == key:
            return known[1]
        strikes = np.unique(snapshot.strike)
        step = float(np.min(np.diff(strikes))) if len(strikes) > 1 else 0.0
        self._steps[snapshot.underlying] = (key, step)
        return step

    def _confirmations(self, snapshot: ChainSnapshot, baselines: ChainBaselines) -> list[tuple[int, dict]]:
        """Pending signals in this chain whose OI built up past ``oi_sigma`` σ of their horizon.

        Judged before the snapshot joins the statistics: the build is scored
        against the session as it stood."""
        if not self.spikes:
            return []
        horizon = dt.timedelta(seconds=self.config.oi_window_s)
        rows = [
            (i, sid)
            for i, sid in enumerate(snapshot.security_id.tolist())
            if sid in self.spikes and snapshot.flags[i] == 0
        ]
        out = []
        for i, sid in rows:
            pending = self.spikes[sid]
            elapsed = snapshot.exchange_time - pending.at
            if not dt.timedelta(0) < elapsed <= horizon:
                continue
            change = float(snapshot.oi[i]) - pending.oi
            k = max(int(round(elapsed.total_seconds() / baselines.interval_s)), 1)
            slot = baselines.slots(np.array([sid]))
            mean, std, n = (float(v[0]) for v in baselines.oi_horizon_stats(slot, np.array([k])))
            if n < MIN_INDEPENDENT_CHANGES * k:  # too few independent k-interval changes yet
                mean1, std1, n1 = (float(v[0]) for v in baselines.oi_horizon_stats(slot, np.array([1])))
                if n1 < MIN_INDEPENDENT_CHANGES:
                    continue
                mean, std = mean1 * k, std1 * k**0.5
            z = (change - mean) / std if std > 0 else (Z_CAP if change > mean else 0.0)
            if change > 0 and z > self.config.oi_sigma:
                out.append(
                    (i, {"oi_build": change, "oi_horizon_s": elapsed.total_seconds(), "oi_build_z": round(z, 4)})
                )
                del self.spikes[sid]
        return out

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

    def _detection(
        self, kind: str, snapshot: ChainSnapshot, s, i: int, score: float | None = None, extra: dict | None = None
    ) -> Detection:
        features = {
            "volume_delta": float(s.volume_delta[i]),
            "volume_mean": round(float(s.volume_mean[i]), 4),
            "volume_z": round(float(s.volume_z[i]), 4),
            "mid_change_pct": round(float(s.mid_change_pct[i]), 4),
            "oi_change": float(s.oi_change[i]),
            "oi_z": round(float(s.oi_z[i]), 4),
            "underlying_ltp": snapshot.underlying_ltp,
            **(extra or {}),
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
