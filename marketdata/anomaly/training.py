"""Training, versioning and loading the per-underlying anomaly models.

After the close, ``train_all`` replays the last N stored sessions of each
underlying (the raw chain tier, kept 7 days) through the same rolling baselines
the detector uses, fits one Isolation Forest per underlying, writes its
artefact under ``VAR_DIR/anomaly`` and records an ``AnomalyModel`` row, which
becomes the live version unless an operator pinned another.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction

from marketdata.anomaly.features import FeatureTracker
from marketdata.anomaly.model import AnomalyScorer, ArtefactError, TrainingParams, dump_artefact, load_artefact, train
from marketdata.models import AnomalyModel, ChainQuote, Underlying
from marketdata.retention import RAW_DAYS
from marketdata.storage import load_chain_history
from quanthub.clock import IST

log = logging.getLogger(__name__)


def _day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
    return start, start + dt.timedelta(days=1)


def session_days(underlying: str, until: dt.date, sessions: int) -> list[dt.date]:
    """The last ``sessions`` days up to ``until`` with stored chains (oldest first).

    One indexed EXISTS per calendar day, back as far as the raw tier keeps
    data (plus a weekend), instead of a DISTINCT over millions of rows.
    """
    found: list[dt.date] = []
    for back in range(RAW_DAYS + 3):
        day = until - dt.timedelta(days=back)
        start, end = _day_bounds(day)
        if ChainQuote.objects.filter(underlying=underlying, received_at__gte=start, received_at__lt=end).exists():
            found.append(day)
            if len(found) == sessions:
                break
    return sorted(found)


def session_matrix(underlying: str, day: dt.date) -> np.ndarray:
    """Feature rows of every usable contract snapshot of one stored session."""
    start, end = _day_bounds(day)
    tracker = FeatureTracker()
    parts = []
    for snapshot in load_chain_history(underlying, start, end):
        features = tracker.update(snapshot)
        parts.append(features.matrix[features.usable])
    return np.concatenate(parts) if parts else np.empty((0, 6))


def artefact_dir() -> Path:
    return Path(settings.QUANTHUB_ANOMALY_DIR)


def train_underlying(
    underlying: str, day: dt.date, *, sessions: int | None = None, params: TrainingParams | None = None
) -> AnomalyModel | None:
    """Train and record one model; None when no session is stored."""
    sessions = sessions or settings.QUANTHUB_ANOMALY_SESSIONS
    params = params or TrainingParams(contamination=settings.QUANTHUB_ANOMALY_CONTAMINATION)
    started = time.perf_counter()
    days = session_days(underlying, day, sessions)
    if not days:
        log.warning("no stored sessions to train on", extra={"underlying": underlying, "until": str(day)})
        return None
    matrix = np.concatenate([session_matrix(underlying, d) for d in days])
    trained = train(underlying, matrix, params)
    stamp = dt.datetime.now(tz=IST).strftime("%Y%m%dT%H%M%S%f")
    path = artefact_dir() / f"{underlying}-{day:%Y%m%d}-{stamp}.pkl"
    digest = dump_artefact(trained, path)
    with transaction.atomic():
        row = AnomalyModel.objects.create(
            underlying=underlying,
            trained_for=day,
            window_start=days[0],
            window_end=days[-1],
            sessions=len(days),
            samples=trained.samples,
            contamination=params.contamination,
            n_estimators=params.n_estimators,
            max_samples=params.max_samples,
            score_quantiles=trained.summary,
            artefact=str(path),
            sha256=digest,
            train_seconds=round(time.perf_counter() - started, 3),
        )
        # Pinned means "keep this one": a new version is recorded, not made live.
        pinned = AnomalyModel.objects.select_for_update().filter(underlying=underlying, live=True, pinned=True)
        if not pinned.exists():
            _make_live(row)
    log.info(
        "anomaly model trained",
        extra={"underlying": underlying, "version": row.pk, "samples": row.samples, "sessions": row.sessions},
    )
    return row


def train_all(day: dt.date | None = None, *, sessions: int | None = None) -> list[AnomalyModel]:
    day = day or dt.datetime.now(tz=IST).date()
    rows = []
    for symbol in Underlying.objects.filter(is_active=True).values_list("symbol", flat=True):
        row = train_underlying(symbol, day, sessions=sessions)
        if row is not None:
            rows.append(row)
    return rows


def _make_live(row: AnomalyModel) -> None:
    """Switch the live version (caller holds a transaction)."""
    AnomalyModel.objects.filter(underlying=row.underlying, live=True).exclude(pk=row.pk).update(
        live=False, pinned=False
    )
    AnomalyModel.objects.filter(pk=row.pk).update(live=True)
    row.live = True


@transaction.atomic
def pin(row: AnomalyModel) -> None:
    """Make this version live and keep it live through nightly training."""
    _make_live(row)
    AnomalyModel.objects.filter(pk=row.pk).update(pinned=True, retired=False)


@transaction.atomic
def unpin(row: AnomalyModel) -> None:
    AnomalyModel.objects.filter(pk=row.pk).update(pinned=False)


@transaction.atomic
def rollback(underlying: str) -> AnomalyModel | None:
    """Retire the live version and make the newest earlier, unretired one live."""
    current = AnomalyModel.objects.select_for_update().filter(underlying=underlying, live=True).first()
    earlier = AnomalyModel.objects.filter(underlying=underlying, retired=False)
    if current is not None:
        earlier = earlier.filter(created_at__lte=current.created_at).exclude(pk=current.pk)
    previous = earlier.order_by("-created_at", "-id").first()
    if previous is None:
        return None
    if current is not None:
        AnomalyModel.objects.filter(pk=current.pk).update(live=False, pinned=False, retired=True)
    _make_live(previous)
    return previous


def load(row: AnomalyModel) -> AnomalyScorer:
    return load_artefact(Path(row.artefact), row.sha256, version=row.pk)


def live_scorers(underlyings=None) -> tuple[dict[str, AnomalyScorer], list[str]]:
    """The live model of each underlying, verified; and what could not be loaded."""
    rows = AnomalyModel.objects.filter(live=True)
    if underlyings is not None:
        rows = rows.filter(underlying__in=list(underlyings))
    scorers: dict[str, AnomalyScorer] = {}
    errors: list[str] = []
    for row in rows:
        try:
            scorers[row.underlying] = load(row)
        except ArtefactError as exc:
            log.error("anomaly model not loaded", extra={"version": row.pk, "error": str(exc)})
            errors.append(f"{row}: {exc}")
    return scorers, errors


def live_versions() -> dict[str, int]:
    return dict(AnomalyModel.objects.filter(live=True).values_list("underlying", "pk"))
