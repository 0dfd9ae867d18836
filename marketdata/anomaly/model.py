"""Training and scoring one underlying's Isolation Forest (pure: no ORM).

A model is trained on the feature rows of the last N sessions. Its artefact
holds the fitted scikit-learn forest and the quantiles of the training
scores, so a live score can be read as a percentile ("more unusual than 99.7 %
of the snapshots it learned from"); that percentile, in [0, 1], is the
``anomaly_score`` signals carry and the strategy's ``min_anomaly_score``
compares against. Artefacts are pickles, and a pickle runs code when it is
loaded, so ``load_artefact`` refuses any file whose SHA-256 is not the one
recorded when it was written.
"""

from __future__ import annotations

import hashlib
import io
import pickle  # noqa: S403 (artefacts are only unpickled after their hash matches the database's)
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from marketdata.anomaly.features import FEATURES
from marketdata.anomaly.forest import CompiledForest

if TYPE_CHECKING:
    from sklearn.ensemble import IsolationForest

ARTEFACT_FORMAT = 1
QUANTILE_GRID = np.concatenate([np.linspace(0.0, 0.99, 991), np.linspace(0.9901, 1.0, 100)])
SUMMARY_QUANTILES = (0.5, 0.9, 0.99, 0.999)


class ArtefactError(Exception):
    """An artefact is missing, unreadable or does not match its recorded hash."""


@dataclass(frozen=True)
class TrainingParams:
    n_estimators: int = 48
    # ≤ 64 samples per tree: at most 64 leaves, one uint64 word per tree when scoring.
    max_samples: int = 64
    contamination: float = 0.001
    seed: int = 7
    max_rows: int = 400_000  # a random subset beyond this: the forest only draws max_samples per tree anyway


@dataclass
class AnomalyScorer:
    """A loaded model: raw Isolation Forest scores and their percentile."""

    underlying: str
    forest: CompiledForest
    quantiles: np.ndarray  # training scores at QUANTILE_GRID
    version: int | None = None
    features: tuple[str, ...] = FEATURES
    meta: dict = field(default_factory=dict)

    def raw(self, matrix: np.ndarray) -> np.ndarray:
        return self.forest.score(matrix)

    def percentile(self, raw: np.ndarray) -> np.ndarray:
        """Share of training snapshots scoring below each raw score."""
        return np.interp(raw, self.quantiles, QUANTILE_GRID, left=0.0, right=1.0)

    def score(self, matrix: np.ndarray) -> np.ndarray:
        return self.percentile(self.raw(matrix))


@dataclass
class Trained:
    forest: IsolationForest
    scorer: AnomalyScorer
    samples: int
    summary: dict[str, float]  # raw-score quantiles of the training rows


def train(underlying: str, matrix: np.ndarray, params: TrainingParams = TrainingParams()) -> Trained:
    if len(matrix) < params.max_samples:
        raise ValueError(f"{underlying}: {len(matrix)} usable snapshots rows, fewer than {params.max_samples}")
    # scikit-learn is imported by the process that trains, not by every process
    # that imports this module (loading an artefact imports it through pickle).
    from sklearn.ensemble import IsolationForest

    rng = np.random.default_rng(params.seed)
    rows = matrix
    if len(rows) > params.max_rows:
        rows = rows[rng.choice(len(rows), params.max_rows, replace=False)]
    forest = IsolationForest(
        n_estimators=params.n_estimators,
        max_samples=params.max_samples,
        contamination=params.contamination,
        random_state=params.seed,
    ).fit(rows)
    compiled = CompiledForest.from_sklearn(forest)
    raw = _score_in_chunks(compiled, rows)
    quantiles = np.quantile(raw, QUANTILE_GRID)
    summary = {f"p{q * 100:g}": float(np.quantile(raw, q)) for q in SUMMARY_QUANTILES}
    scorer = AnomalyScorer(underlying, compiled, quantiles, meta={"params": params.__dict__})
    return Trained(forest, scorer, len(rows), summary)


def _score_in_chunks(compiled: CompiledForest, rows: np.ndarray, chunk: int = 4096) -> np.ndarray:
    # The scorer keeps scratch arrays as large as the largest batch: keep them small.
    return np.concatenate([compiled.score(rows[i : i + chunk]) for i in range(0, len(rows), chunk)])


def dump_artefact(trained: Trained, path: Path) -> str:
    """Write the artefact; return its SHA-256 (hex)."""
    payload = {
        "format": ARTEFACT_FORMAT,
        "underlying": trained.scorer.underlying,
        "features": list(FEATURES),
        "forest": trained.forest,
        "quantiles": trained.scorer.quantiles,
        "meta": trained.scorer.meta,
    }
    buffer = io.BytesIO()
    pickle.dump(payload, buffer, protocol=5)
    data = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def load_artefact(path: Path, sha256: str, *, version: int | None = None) -> AnomalyScorer:
    """Verify the file's hash, then unpickle it. A mismatch never reaches pickle."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ArtefactError(f"cannot read {path}: {exc.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ArtefactError(f"{path}: SHA-256 {actual[:12]}… is not the recorded {sha256[:12]}…; refusing to load it")
    payload = pickle.loads(data)  # noqa: S301 (hash verified above)
    if payload.get("format") != ARTEFACT_FORMAT or tuple(payload.get("features", ())) != FEATURES:
        raise ArtefactError(f"{path}: artefact format or features do not match this version of the code")
    return AnomalyScorer(
        payload["underlying"],
        CompiledForest.from_sklearn(payload["forest"]),
        np.asarray(payload["quantiles"], dtype=np.float64),
        version=version,
        meta=payload.get("meta", {}),
    )
