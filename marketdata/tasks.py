"""Celery tasks of the market-data room. Scheduled by django-celery-beat
(rows created by migration 0004); without REDIS_URL they run in-process."""

from __future__ import annotations

from celery import shared_task

from marketdata.retention import prune
from quanthub.clock import RealClock


@shared_task(name="marketdata.prune_marketdata")
def prune_marketdata() -> dict[str, int]:
    return prune(RealClock().now())
