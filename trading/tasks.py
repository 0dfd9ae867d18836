"""Celery tasks of the trading room (scheduled by django-celery-beat rows that
data migrations create; in-process without Redis)."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="trading.refresh_dhan_token")
def refresh_dhan_token() -> dict:
    from django.conf import settings

    from quanthub.dhan.tokens import refresh_or_alert

    if not settings.DHAN_CLIENT_ID:
        return {"method": "skipped: no DHAN_CLIENT_ID (no Dhan account to renew for)"}

    result = refresh_or_alert()
    return {"method": result.method, "expiry": result.expiry}


@shared_task(bind=True, name="trading.deliver_alert", acks_late=True, max_retries=None)
def deliver_alert(self, alert_id: int, sink: str) -> str:
    """Deliver one alert to one sink; a failed try is retried after each of
    ``ALERT_SINK_RETRY_DELAYS`` seconds, then marked failed on the alert."""
    from django.conf import settings

    from trading.alerts import RETRY, attempt_delivery

    delays = settings.ALERT_SINK_RETRY_DELAYS
    retries = self.request.retries
    outcome = attempt_delivery(alert_id, sink, attempt=retries + 1, final=retries >= len(delays))
    if outcome == RETRY:
        raise self.retry(countdown=delays[retries])
    return outcome


@shared_task(bind=True, name="trading.backtest_task", acks_late=True, max_retries=None)
def backtest_task(self, task_id: int) -> str:
    """One (day, parameter set) of a fan-out backtest (``trading.backtest.fanout``).

    A failed attempt is recorded on the task and retried, each attempt under a
    fresh account namespace, up to ``fanout.MAX_ATTEMPTS``; the last task to
    finish aggregates the run's report.
    """
    from trading.backtest import fanout

    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))  # its worker died mid-task
    outcome = fanout.run_task(task_id, recover=redelivered)
    if outcome == "failed" and fanout.retryable(task_id):
        raise self.retry(countdown=1)
    return outcome
