"""Celery tasks of the trading room (scheduled by django-celery-beat rows that
data migrations create; in-process without Redis)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="trading.refresh_dhan_token")
def refresh_dhan_token() -> dict:
    from trading.brokers.tokens import refresh_or_alert

    result = refresh_or_alert()
    return {"method": result.method, "expiry": result.expiry}
