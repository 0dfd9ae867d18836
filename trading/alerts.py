"""In-app alerts, and delivery to outside sinks.

``raise_alert`` stores the alert in the caller's transaction and publishes it
to the dashboards after commit. Alerts at or above ``ALERT_SINK_MIN_LEVEL`` are
also sent to every configured sink (``trading/sinks/``), after commit too, so
an alert whose transaction rolls back is never sent.

Each sink is delivered on its own and retried with backoff, and nothing a sink
does reaches the caller: the trading loop only ever pays for an on-commit
hook. With ``REDIS_URL`` a Celery task does the delivery (acks late, so a
worker that dies mid-send leaves the message queued); in the embedded default
a small thread pool does, because the engine's event loop must never wait for
Slack. ``Alert.deliveries`` records, per sink, ``status`` (pending, retrying,
sent, failed), ``attempts`` and the last ``error``; secrets never go there.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from trading.events import publish_on_commit
from trading.models import Alert
from trading.sinks import AlertMessage, DeliveryError, configured_sinks, get_sink, scrub

log = logging.getLogger(__name__)

_RANK = {Alert.Level.INFO: 0, Alert.Level.WARNING: 1, Alert.Level.CRITICAL: 2}

# Outcomes of one delivery attempt.
SENT, RETRY, FAILED, GONE = "sent", "retry", "failed", "gone"


def raise_alert(
    level: str, source: str, title: str, message: str = "", *, account: str = "default", at: dt.datetime | None = None
) -> Alert:
    """Record an alert (and queue it for the sinks after commit). ``at``: the clock of
    whoever raises it (the engine's for the engine and anything acting for it)."""
    if level not in Alert.Level.values:
        raise ValueError(f"Unknown alert level {level!r}")
    sinks = sinks_for(level)
    alert = Alert.objects.create(
        account=account,
        level=level,
        source=source[:40],
        title=title[:200],
        message=message,
        deliveries={name: {"status": "pending", "attempts": 0} for name in sinks},
        **({"created_at": at} if at is not None else {}),
    )
    log.warning("alert raised", extra={"alert_id": alert.pk, "level": level, "source": source, "title": title})
    publish_on_commit("alert", {"id": alert.pk, "level": level, "title": alert.title}, account=account)
    if sinks:
        transaction.on_commit(partial(dispatch, alert.pk, sinks), robust=True)
    return alert


def sinks_for(level: str) -> list[str]:
    """The configured sinks an alert of this level goes to."""
    if _RANK[level] < _RANK[settings.ALERT_SINK_MIN_LEVEL]:
        return []
    try:
        return [name for name in configured_sinks() if get_sink(name).accepts(level)]
    except Exception:  # a broken sink module must not stop the caller
        log.exception("alert sinks could not be loaded")
        return []


# --- Dispatch -----------------------------------------------------------------------

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_pending: set[Future] = set()
# The delivery threads' own database work (one read, one short write per try)
# goes through this lock: on SQLite they would queue for the write lock anyway,
# and an in-memory shared-cache database fails instead of waiting. It is never
# held during a sink's HTTP call.
_db_lock = threading.Lock()


def _submit(fn: Callable, *args) -> None:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="alert-sink")
        future = _executor.submit(fn, *args)
        _pending.add(future)
    future.add_done_callback(_pending.discard)


def dispatch(alert_id: int, sinks: Sequence[str]) -> None:
    """Hand each sink's delivery to the background; returns at once.

    Even enqueueing a Celery task happens off the caller's thread: with Redis
    down, kombu's publish retries would otherwise stall the engine.
    """
    for name in sinks:
        try:
            _submit(_deliver_in_background, alert_id, name)
        except Exception:  # e.g. interpreter shutting down
            log.exception("alert delivery could not be scheduled", extra={"alert_id": alert_id, "sink": name})


def _deliver_in_background(alert_id: int, sink: str) -> None:
    close_old_connections()
    try:
        if not settings.CELERY_TASK_ALWAYS_EAGER:
            from trading.tasks import deliver_alert

            try:
                deliver_alert.apply_async((alert_id, sink), retry_policy={"max_retries": 2, "interval_start": 0.5})
                return
            except Exception as exc:
                # The queue is down: deliver from here rather than not at all.
                log.warning("alert queue unavailable, delivering in-process", extra={"error": type(exc).__name__})
        deliver(alert_id, sink)
    except Exception:
        log.exception("alert delivery crashed", extra={"alert_id": alert_id, "sink": sink})
    finally:
        connection.close()


def wait_for_deliveries(timeout: float | None = None) -> bool:
    """Wait for the background deliveries started so far; True if all finished.
    For tests and for a clean shutdown."""
    with _executor_lock:
        futures = set(_pending)
    done, not_done = wait(futures, timeout=timeout)
    return not not_done


# --- Delivery -----------------------------------------------------------------------


def deliver(
    alert_id: int,
    sink: str,
    *,
    delays: Sequence[float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Deliver one alert to one sink, retrying after each of ``delays`` seconds
    (default ``ALERT_SINK_RETRY_DELAYS``). Returns sent, failed or gone."""
    delays = settings.ALERT_SINK_RETRY_DELAYS if delays is None else delays
    outcome = attempt_delivery(alert_id, sink, attempt=1, final=not delays)
    for number, delay in enumerate(delays, start=2):
        if outcome != RETRY:
            break
        sleep(delay)
        outcome = attempt_delivery(alert_id, sink, attempt=number, final=number == len(delays) + 1)
    return outcome


def attempt_delivery(alert_id: int, sink: str, *, attempt: int, final: bool) -> str:
    """One try: send, record the outcome on the alert, say what happens next."""
    with _db_lock:
        alert = Alert.objects.filter(pk=alert_id).first()
    if alert is None:
        return GONE
    target = get_sink(sink)
    try:
        target.send(AlertMessage.from_alert(alert))
    except DeliveryError as exc:
        error, retry = scrub(str(exc), target.secrets()), exc.retry and not final
    except Exception as exc:  # a bug in a sink is that sink's failure, nobody else's
        error, retry = type(exc).__name__, False
    else:
        _record(alert_id, sink, SENT, attempt)
        log.info("alert delivered", extra={"alert_id": alert_id, "sink": sink, "attempts": attempt})
        return SENT
    status = "retrying" if retry else FAILED
    _record(alert_id, sink, status, attempt, error)
    log.warning(
        "alert delivery failed",
        extra={"alert_id": alert_id, "sink": sink, "attempts": attempt, "error": error, "will_retry": retry},
    )
    return RETRY if retry else FAILED


def _record(alert_id: int, sink: str, status: str, attempts: int, error: str = "") -> None:
    # Sinks run in parallel on one alert, in threads or in Celery workers: lock
    # the row so two updates of the JSON field never overwrite each other
    # (SQLite's IMMEDIATE transactions serialise writers the same way).
    with _db_lock, transaction.atomic():
        alert = Alert.objects.select_for_update().filter(pk=alert_id).first()
        if alert is None:
            return
        entry = {"status": status, "attempts": attempts, "at": timezone.now().isoformat()}
        if error:
            entry["error"] = error[:300]
        alert.deliveries = {**alert.deliveries, sink: entry}
        alert.save(update_fields=["deliveries"])
