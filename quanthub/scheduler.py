"""The periodic jobs of the embedded default, run inside ``run_engine --serve``.

In production Celery beat (django-celery-beat's database scheduler) sends the
periodic tasks to the workers. The embedded default has no Redis, so no beat
and no worker: this scheduler reads the same ``PeriodicTask`` rows (the ones
the migrations create and operators edit in the admin — nightly backup, market
data retention, anomaly training after the close, the Dhan token refresh, the
audit checkpoint at the close), works out when each is due the way beat does,
and calls the same task functions in a thread of its own, so a backup or a
training run never holds up the engine's event loop. With ``REDIS_URL`` set it
does not start: beat runs them, never both.

A job is due at the first time its schedule names after its ``last_run_at``
(crontab fields in the row's time zone, Celery's meaning: every field must
match), or an interval after it. A job that has never run counts from the
moment the scheduler first saw it, as beat does; a job missed while nothing was
running (the machine was off at 23:30) runs once as soon as the scheduler
starts. Before running a job, the scheduler claims it with an UPDATE
conditional on the ``last_run_at`` it read, so two processes (an engine and its
standby on the same database) never both run it.

A job that raises is logged and raises a WARNING alert ("Periodic job
failed"), and the scheduler goes on with the others: nothing a job does ends
the process. Its ``last_run_at`` has moved on, so it is tried again at its next
scheduled time, not in a loop.

The clock is injected: the wall clock (``RealClock``, the engine's clock on the
live feed) in ``run_engine --serve``, a ``SimulatedClock`` in tests, where one
call of ``run_pending`` is one unit of work.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from celery.schedules import crontab
from django.conf import settings
from django.db import DatabaseError, close_old_connections
from django.db.models import F
from django_celery_beat.models import PeriodicTask

from quanthub.clock import Clock, RealClock
from quanthub.logging import mask_secrets

log = logging.getLogger(__name__)

POLL_S = 30.0  # the longest sleep: edits in the admin are picked up within it
_SEARCH_DAYS = 366 * 4 + 1  # a crontab that fires at all fires within four years (29 February)


def celery_tasks() -> Mapping[str, Callable]:
    """Celery's registry of task functions, with every app's ``tasks`` module imported."""
    from quanthub.celery import app

    app.loader.import_default_modules()
    return app.tasks


@dataclass(frozen=True)
class Job:
    """One enabled ``PeriodicTask`` row, as the scheduler reads it."""

    pk: int
    name: str
    task: str
    args: list
    kwargs: dict
    last_run_at: dt.datetime | None
    start_time: dt.datetime | None
    expires: dt.datetime | None
    one_off: bool
    cron: crontab | None = None
    tz: dt.tzinfo | None = None
    every: dt.timedelta | None = None

    @classmethod
    def from_row(cls, row: PeriodicTask) -> Job:
        common = {
            "pk": row.pk,
            "name": row.name,
            "task": row.task,
            "args": json.loads(row.args or "[]"),
            "kwargs": json.loads(row.kwargs or "{}"),
            "last_run_at": row.last_run_at,
            "start_time": row.start_time,
            "expires": row.expires,
            "one_off": row.one_off,
        }
        if row.crontab is not None:
            c = row.crontab
            spec = crontab(
                minute=c.minute,
                hour=c.hour,
                day_of_week=c.day_of_week,
                day_of_month=c.day_of_month,
                month_of_year=c.month_of_year,
            )
            return cls(**common, cron=spec, tz=ZoneInfo(str(c.timezone)))
        if row.interval is not None:
            return cls(**common, every=dt.timedelta(**{row.interval.period: row.interval.every}))
        raise ValueError(
            f"periodic task {row.name!r} has no crontab or interval schedule (solar and clocked are not run)"
        )

    def next_run(self, since: dt.datetime) -> dt.datetime:
        """The first time after ``since`` this job's schedule names."""
        if self.start_time is not None and since < self.start_time:
            since = self.start_time - dt.timedelta(microseconds=1)
        if self.every is not None:
            return since + self.every
        return next_crontab_time(self.cron, since, self.tz)


def next_crontab_time(spec: crontab, since: dt.datetime, tz: dt.tzinfo) -> dt.datetime:
    """The first minute strictly after ``since`` that matches every field of ``spec`` in ``tz``."""
    local = since.astimezone(tz)
    day = local.date()
    hours, minutes = sorted(spec.hour), sorted(spec.minute)
    for _ in range(_SEARCH_DAYS):
        # Celery numbers the days of the week from Sunday = 0.
        if (
            day.month in spec.month_of_year
            and day.day in spec.day_of_month
            and day.isoweekday() % 7 in spec.day_of_week
        ):
            for hour in hours:
                for minute in minutes:
                    candidate = dt.datetime.combine(day, dt.time(hour, minute), tzinfo=tz)
                    if candidate > local:
                        return candidate
        day += dt.timedelta(days=1)
    raise ValueError(f"the crontab {spec!r} never fires")


class Scheduler:
    def __init__(
        self,
        clock: Clock,
        *,
        tasks: Mapping[str, Callable] | None = None,
        account: str | None = None,
    ):
        self.clock = clock
        self.account = account or settings.QUANTHUB_ACCOUNT
        self._tasks = tasks
        self._first_seen: dict[int, dt.datetime] = {}
        self._refused: set[tuple[int, str]] = set()  # rows already reported as unrunnable
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def tasks(self) -> Mapping[str, Callable]:
        if self._tasks is None:
            self._tasks = celery_tasks()
        return self._tasks

    def jobs(self) -> list[Job]:
        jobs = []
        rows = PeriodicTask.objects.filter(enabled=True).select_related("crontab", "interval").order_by("pk")
        for row in rows:
            try:
                jobs.append(Job.from_row(row))
            except (ValueError, TypeError) as exc:  # a bad row in the admin: report once, run the rest
                self._refuse(row.pk, row.name, str(exc))
        return jobs

    def due_at(self, job: Job, now: dt.datetime) -> dt.datetime:
        since = job.last_run_at or self._first_seen.setdefault(job.pk, now)
        return job.next_run(since)

    def run_pending(self) -> dt.datetime | None:
        """Run every job due at the clock's now, one after another; return when
        the next one is due (None when nothing is scheduled)."""
        now = self.clock.now()
        upcoming = []
        for job in self.jobs():
            when = self.due_at(job, now)
            if when <= now:
                if job.expires is not None and now >= job.expires:
                    continue  # beat does not send an expired task either
                fn = self.tasks.get(job.task)
                if fn is None:
                    self._refuse(job.pk, job.name, f"it names the task {job.task!r}, which this installation lacks")
                    continue
                if self._claim(job, now):
                    self._run(job, fn)
                when = job.next_run(now)
            if job.expires is None or when < job.expires:
                upcoming.append(when)
        return min(upcoming, default=None)

    def _claim(self, job: Job, now: dt.datetime) -> bool:
        """Move ``last_run_at`` on, conditional on the value read: 0 rows means
        another scheduler ran it first (or an operator changed it)."""
        changes = {"last_run_at": now, "total_run_count": F("total_run_count") + 1}
        if job.one_off:
            changes["enabled"] = False
        return bool(PeriodicTask.objects.filter(pk=job.pk, last_run_at=job.last_run_at).update(**changes))

    def _run(self, job: Job, fn: Callable) -> None:
        started = time.monotonic()
        log.info("periodic job started", extra={"job": job.name, "task": job.task})
        try:
            result = fn(*job.args, **job.kwargs)
        except Exception as exc:
            log.exception("periodic job failed", extra={"job": job.name, "task": job.task})
            self._alert(
                f"Periodic job failed: {job.name}",
                f"{job.task} raised {type(exc).__name__}: {exc}. It runs again at its next scheduled time.",
            )
            return
        log.info(
            "periodic job done",
            extra={
                "job": job.name,
                "task": job.task,
                "seconds": round(time.monotonic() - started, 3),
                "result": result,
            },
        )

    def _refuse(self, pk: int, name: str, reason: str) -> None:
        if (pk, reason) in self._refused:
            return
        self._refused.add((pk, reason))
        log.error("periodic job not run", extra={"job": name, "reason": reason})
        self._alert(f"Periodic job not run: {name}", f"The periodic task {name!r} is not run: {reason}.")

    def _alert(self, title: str, message: str) -> None:
        from trading.alerts import raise_alert

        try:
            raise_alert("WARNING", "scheduler", title, mask_secrets(message), account=self.account, at=self.clock.now())
        except Exception:  # the database is away: the log line above is what remains
            log.exception("alert not recorded", extra={"title": title})

    # --- the thread ----------------------------------------------------------------

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self._loop, name="periodic-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the job running now, waiting at most ``timeout`` for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        database_away = False
        while not self._stop.is_set():
            wait = POLL_S
            try:
                upcoming = self.run_pending()
                if upcoming is not None:
                    wait = min(POLL_S, max(0.0, (upcoming - self.clock.now()).total_seconds()))
                if database_away:
                    log.info("periodic jobs checked again: the database is back")
                database_away = False
            except DatabaseError as exc:  # the database is away: one line, then try again each poll
                if not database_away:
                    log.warning("periodic jobs not checked: database unreachable", extra={"error": type(exc).__name__})
                database_away = True
            except Exception:
                log.exception("periodic jobs not checked")
            close_old_connections()  # this thread's own connection, between passes
            self._stop.wait(max(wait, 0.05))


def start_in_process(clock: Clock | None = None) -> Scheduler | None:
    """Start the scheduler for the embedded default; None when Celery beat runs
    the periodic jobs (``REDIS_URL`` is set)."""
    if settings.REDIS_URL:
        log.info("periodic jobs are Celery beat's (REDIS_URL is set): no in-process scheduler")
        return None
    log.info("periodic jobs run in this process (no REDIS_URL, so no Celery beat)")
    return Scheduler(clock or RealClock()).start()
