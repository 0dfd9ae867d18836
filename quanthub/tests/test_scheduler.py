"""The in-process scheduler of the embedded default: the migrations' beat schedule,
run on a controllable clock, one unit of work (``run_pending``) at a time."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

from quanthub import scheduler as scheduler_module
from quanthub.clock import IST, SimulatedClock
from quanthub.scheduler import Scheduler, next_crontab_time, start_in_process
from trading.models import Alert

MONDAY = dt.date(2026, 11, 23)
TUESDAY = MONDAY + dt.timedelta(days=1)

# What the migrations schedule, by task: the functions Celery beat sends.
SCHEDULED = {
    "audit.checkpoint_close",
    "marketdata.prune_marketdata",
    "marketdata.train_anomaly_models",
    "quanthub.nightly_backup",
    "trading.refresh_dhan_token",
}


def at(day: dt.date, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute, second), tzinfo=IST)


class Recorder(dict):
    """Stand-ins for the task functions: each call is recorded with the clock's time."""

    def __init__(self, clock, fail=()):
        super().__init__()
        self.calls: list[tuple[str, dt.datetime]] = []
        for name in SCHEDULED:
            self[name] = self._fake(name, clock, name in fail)

    def _fake(self, name, clock, fail):
        def run(*args, **kwargs):
            self.calls.append((name, clock.now()))
            if fail:
                raise RuntimeError(f"{name} broke")
            return {"ok": True}

        return run

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _step_to(scheduler, clock, when):
    clock.set(when)
    return scheduler.run_pending()


def test_every_scheduled_task_names_a_task_function_celery_knows(db):
    rows = set(PeriodicTask.objects.filter(enabled=True).values_list("task", flat=True))
    assert rows == SCHEDULED
    tasks = scheduler_module.celery_tasks()
    assert all(callable(tasks[name]) for name in rows)


def test_jobs_run_when_their_schedule_says_on_the_clock_given(db):
    clock = SimulatedClock(at(MONDAY, 15, 0))
    tasks = Recorder(clock)
    jobs = Scheduler(clock, tasks=tasks)
    # First sight: nothing has run yet, so each job counts from now (as beat does).
    assert jobs.run_pending() == at(MONDAY, 15, 35)
    assert tasks.calls == []
    assert _step_to(jobs, clock, at(MONDAY, 15, 34, 59)) == at(MONDAY, 15, 35)
    assert tasks.calls == []
    assert _step_to(jobs, clock, at(MONDAY, 15, 35)) == at(MONDAY, 16, 5)
    assert _step_to(jobs, clock, at(MONDAY, 16, 5, 1)) == at(MONDAY, 21, 0)  # six hours after first sight
    assert _step_to(jobs, clock, at(MONDAY, 21, 0)) == at(MONDAY, 23, 30)
    assert _step_to(jobs, clock, at(MONDAY, 23, 30)) == at(TUESDAY, 3, 0)
    assert _step_to(jobs, clock, at(TUESDAY, 3, 0)) == at(TUESDAY, 8, 50)
    _step_to(jobs, clock, at(TUESDAY, 8, 50))
    assert tasks.calls == [
        ("audit.checkpoint_close", at(MONDAY, 15, 35)),
        ("marketdata.train_anomaly_models", at(MONDAY, 16, 5, 1)),
        ("marketdata.prune_marketdata", at(MONDAY, 21, 0)),
        ("quanthub.nightly_backup", at(MONDAY, 23, 30)),
        ("marketdata.prune_marketdata", at(TUESDAY, 3, 0)),
        ("trading.refresh_dhan_token", at(TUESDAY, 8, 50)),
    ]
    # The books say when each ran, as beat's would.
    backup = PeriodicTask.objects.get(task="quanthub.nightly_backup")
    assert backup.last_run_at == at(MONDAY, 23, 30) and backup.total_run_count == 1
    # Nothing runs twice: the next pass at the same time finds nothing due.
    jobs.run_pending()
    assert len(tasks.calls) == 6


def test_weekday_jobs_skip_the_weekend(db):
    friday = dt.date(2026, 11, 27)
    clock = SimulatedClock(at(friday, 16, 10))
    PeriodicTask.objects.update(last_run_at=at(friday, 16, 5))
    tasks = Recorder(clock)
    jobs = Scheduler(clock, tasks=tasks)
    jobs.run_pending()
    for day in (friday + dt.timedelta(days=1), friday + dt.timedelta(days=2)):
        _step_to(jobs, clock, at(day, 16, 6))
    assert "marketdata.train_anomaly_models" not in tasks.names()
    _step_to(jobs, clock, at(friday + dt.timedelta(days=3), 16, 6))
    assert tasks.names().count("marketdata.train_anomaly_models") == 1


def test_a_job_missed_while_nothing_ran_runs_once_at_start(db):
    clock = SimulatedClock(at(MONDAY, 17, 0))
    PeriodicTask.objects.filter(task="marketdata.train_anomaly_models").update(
        last_run_at=at(MONDAY - dt.timedelta(days=3), 16, 5, 10)  # last Friday's run
    )
    tasks = Recorder(clock)
    jobs = Scheduler(clock, tasks=tasks)
    jobs.run_pending()
    assert tasks.names() == ["marketdata.train_anomaly_models"]
    _step_to(jobs, clock, at(MONDAY, 17, 1))
    assert tasks.names() == ["marketdata.train_anomaly_models"]


def test_a_failing_job_raises_an_alert_and_the_others_still_run(db):
    clock = SimulatedClock(at(MONDAY, 23, 29))
    PeriodicTask.objects.update(last_run_at=at(MONDAY, 8, 0))
    tasks = Recorder(clock, fail={"quanthub.nightly_backup"})
    jobs = Scheduler(clock, tasks=tasks)
    jobs.run_pending()  # the audit checkpoint and the training were due since the close
    tasks.calls.clear()
    _step_to(jobs, clock, at(MONDAY, 23, 30))
    assert tasks.names() == ["quanthub.nightly_backup"]
    alert = Alert.objects.get(source="scheduler")
    assert alert.level == "WARNING"
    assert alert.title == "Periodic job failed: Back up the database (nightly, with retention)"
    assert "quanthub.nightly_backup raised RuntimeError: quanthub.nightly_backup broke" in alert.message
    assert alert.created_at == at(MONDAY, 23, 30)
    # Not retried in a loop: it waits for its next scheduled time, and the others go on.
    _step_to(jobs, clock, at(MONDAY + dt.timedelta(days=1), 8, 50))
    assert tasks.names().count("quanthub.nightly_backup") == 1
    assert "trading.refresh_dhan_token" in tasks.names()


def test_the_scheduler_thread_survives_a_failing_job(db, monkeypatch):
    """The thread outlives a job that raises and a pass that fails outright."""
    clock = SimulatedClock(at(MONDAY, 23, 30))
    PeriodicTask.objects.update(last_run_at=at(MONDAY, 23, 29))
    (backup,) = [job for job in Scheduler(clock).jobs() if job.task == "quanthub.nightly_backup"]
    tasks = Recorder(clock, fail={"quanthub.nightly_backup"})
    jobs = Scheduler(clock, tasks=tasks)
    # The thread stays off the test's database connection: the schedule, the
    # claim and the alert are stubbed (the tests above run them for real).
    passes, alerts = [], []

    def listing():
        passes.append(clock.now())
        if len(passes) == 2:
            raise RuntimeError("a pass that fails outright")
        return [backup]

    monkeypatch.setattr(jobs, "jobs", listing)
    monkeypatch.setattr(jobs, "_claim", lambda job, now: True)
    monkeypatch.setattr(jobs, "_alert", lambda title, message: alerts.append(title))
    monkeypatch.setattr(scheduler_module, "POLL_S", 0.01)
    jobs.start()
    try:
        deadline = time.monotonic() + 10
        while len(tasks.calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert jobs.running
    finally:
        jobs.stop()
    assert not jobs.running
    assert len(passes) >= 3 and tasks.names()[:2] == ["quanthub.nightly_backup"] * 2
    assert alerts[:2] == ["Periodic job failed: Back up the database (nightly, with retention)"] * 2


def test_two_schedulers_on_one_database_run_a_job_once(db, monkeypatch):
    clock = SimulatedClock(at(MONDAY, 23, 30))
    PeriodicTask.objects.update(last_run_at=at(MONDAY, 23, 29))
    first, second = Recorder(clock), Recorder(clock)
    a, b = Scheduler(clock, tasks=first), Scheduler(clock, tasks=second)
    # Both read the schedule before either claims the job (an engine and its standby).
    read_before = b.jobs()
    a.run_pending()
    monkeypatch.setattr(b, "jobs", lambda: read_before)
    b.run_pending()
    assert first.names() == ["quanthub.nightly_backup"] and second.names() == []
    assert PeriodicTask.objects.get(task="quanthub.nightly_backup").total_run_count == 1


def test_edits_in_the_admin_are_followed(db):
    clock = SimulatedClock(at(MONDAY, 12, 0))
    tasks = Recorder(clock)
    jobs = Scheduler(clock, tasks=tasks)
    assert jobs.run_pending() == at(MONDAY, 15, 35)
    row = PeriodicTask.objects.get(task="audit.checkpoint_close")
    row.enabled = False
    row.save()
    backup = PeriodicTask.objects.get(task="quanthub.nightly_backup")
    backup.crontab = CrontabSchedule.objects.create(minute="0", hour="13", timezone="Asia/Kolkata")
    backup.save()
    assert jobs.run_pending() == at(MONDAY, 13, 0)
    _step_to(jobs, clock, at(MONDAY, 15, 40))
    assert tasks.names() == ["quanthub.nightly_backup"]


def test_a_row_naming_no_known_task_is_reported_once(db):
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.create(name="Typo", task="quanthub.nightly_bakcup", interval=every_minute)
    clock = SimulatedClock(at(MONDAY, 12, 0))
    jobs = Scheduler(clock, tasks=Recorder(clock))
    for minute in (0, 1, 2, 3):
        _step_to(jobs, clock, at(MONDAY, 12, minute))
    alert = Alert.objects.get(source="scheduler")
    assert alert.title == "Periodic job not run: Typo"
    assert "'quanthub.nightly_bakcup', which this installation lacks" in alert.message
    assert PeriodicTask.objects.get(name="Typo").total_run_count == 0


def test_a_one_off_job_runs_once_and_is_switched_off(db):
    every_minute, _ = IntervalSchedule.objects.get_or_create(every=1, period="minutes")
    PeriodicTask.objects.create(
        name="Once", task="quanthub.nightly_backup", interval=every_minute, one_off=True, last_run_at=at(MONDAY, 11, 0)
    )
    PeriodicTask.objects.exclude(name="Once").update(enabled=False)
    clock = SimulatedClock(at(MONDAY, 12, 0))
    tasks = Recorder(clock)
    jobs = Scheduler(clock, tasks=tasks)
    jobs.run_pending()
    _step_to(jobs, clock, at(MONDAY, 12, 5))
    assert tasks.names() == ["quanthub.nightly_backup"]
    assert not PeriodicTask.objects.get(name="Once").enabled


@pytest.mark.parametrize(
    ("fields", "since", "expected"),
    [
        ({"minute": "5", "hour": "16", "day_of_week": "1-5"}, at(MONDAY, 16, 5), at(MONDAY + dt.timedelta(1), 16, 5)),
        ({"minute": "*/15"}, at(MONDAY, 9, 14, 59), at(MONDAY, 9, 15)),
        (
            {"minute": "0", "hour": "0", "day_of_month": "29", "month_of_year": "2"},
            at(MONDAY, 0),
            at(dt.date(2028, 2, 29), 0),
        ),
        ({"minute": "30", "hour": "23", "day_of_week": "sun"}, at(MONDAY, 0), at(dt.date(2026, 11, 29), 23, 30)),
    ],
)
def test_crontab_times_follow_celerys_fields(fields, since, expected):
    from celery.schedules import crontab

    assert next_crontab_time(crontab(**fields), since, IST) == expected


def test_with_redis_celery_beat_runs_the_jobs_and_the_engine_does_not(db, settings, monkeypatch):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    assert start_in_process() is None
    settings.REDIS_URL = ""
    monkeypatch.setattr(Scheduler, "run_pending", lambda self: None)  # the thread stays off the test's database
    jobs = start_in_process(SimulatedClock(at(MONDAY, 12, 0)))
    try:
        assert jobs is not None and jobs.running
    finally:
        jobs.stop()
