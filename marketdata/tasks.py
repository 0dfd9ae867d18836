"""Celery tasks of the market-data room. Scheduled by django-celery-beat
(rows created by migrations 0004 and 0005); without REDIS_URL they run in-process."""

from __future__ import annotations

from celery import shared_task

from marketdata.retention import prune
from quanthub.clock import RealClock


@shared_task(name="marketdata.prune_marketdata")
def prune_marketdata() -> dict[str, int]:
    return prune(RealClock().now())


@shared_task(name="marketdata.train_anomaly_models")
def train_anomaly_models() -> dict[str, int]:
    """After the close: one Isolation Forest per underlying on the last N sessions."""
    from marketdata.anomaly.training import train_all  # sklearn loads only in the process that trains

    return {row.underlying: row.pk for row in train_all(RealClock().now().date())}
