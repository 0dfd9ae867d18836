"""Fan-out backtests on Redis with real Celery worker processes: 10 simulated days
with 1 worker and with 2 workers, against a sequential run of the same tasks.

    python benchmarks/backtest_scale.py [--json PATH] [--minutes N] [--days N]
        [--postgres URL] [--redis URL]

Defaults: PostgreSQL ``postgres://postgres@127.0.0.1:5432/qh_backtest`` (migrated
here), Redis ``redis://127.0.0.1:6379/8``, and a shortened session of 10
minutes a day (``--minutes``) so the whole benchmark stays within about ten
minutes on a 2-core machine; ``--minutes 375`` runs whole sessions. Each
worker is its own ``celery worker`` process with concurrency 1. Timing starts
when the run is queued (the master preparation included) and ends when the
last task's report is aggregated; workers are started and ready beforehand.

Metrics: ``days_10_workers_1_s``, ``days_10_workers_2_s``,
``speedup_2_workers`` (1-worker time over 2-worker time), ``sequential_s``
(the same tasks one after another in this process) and
``hashes_match_sequential`` (1 when every (day, parameter set) decision hash of
both Celery runs equals the sequential run's).

On a shared machine the ratio says more about the neighbours than about the
code, so the time spent outside the simulation is measured directly, from each
task's ``timings`` (``trading.backtest.fanout.execute``) and the tasks' start
and finish times:

* ``task_fixed_s_mean`` / ``task_session_s_mean``: a task's fixed cost (loading
  it and its day's instruments, the engine's start-up and wind-down, its report,
  claiming and recording it) and its engine session, averaged over the tasks of
  both Celery runs; ``task_fixed_fraction``: fixed over fixed + session;
* ``workers_N_dispatch_s``: queueing the run until the first task starts
  (nothing runs meanwhile); ``workers_N_aggregate_s``: the last task recorded
  until the run's report is seen; ``workers_N_serial_fraction``: both over the
  run's time;
* ``workers_N_outside_session_fraction``: 1 − (the tasks' session time) / (N ×
  the run's time): every worker-second not spent simulating (fixed costs, the
  serial part, and a worker idle at the end while the other finishes).

``load_average_1m`` is the machine's load when the benchmark ends.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, parser, report, setup_django

PG_DEFAULT = "postgres://postgres@127.0.0.1:5432/qh_backtest"
REDIS_DEFAULT = "redis://127.0.0.1:6379/8"
FIRST_DAY = dt.date(2026, 11, 2)
WAIT_LIMIT_S = 900


def _ensure_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def _env(pg: str, redis: str, var_dir: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": pg,
        "REDIS_URL": redis,
        "QUANTHUB_VAR_DIR": var_dir,
        "LOG_LEVEL": "error",
        "DJANGO_SETTINGS_MODULE": "quanthub.settings",
    }


def _start_workers(n: int, env: dict[str, str], logs: Path) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        log = open(logs / f"worker-{n}-{i}.log", "w")  # noqa: SIM115 (closed with the process)
        procs.append(
            subprocess.Popen(
                [
                    str(ROOT / ".venv" / "bin" / "celery"),
                    "-A",
                    "quanthub",
                    "worker",
                    "-c",
                    "1",
                    "-P",
                    "prefork",
                    "-n",
                    f"bt{n}-{i}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-l",
                    "info",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + 60
    for i in range(n):
        path = logs / f"worker-{n}-{i}.log"
        while "ready" not in path.read_text(errors="ignore"):
            if time.monotonic() > deadline:
                raise SystemExit(f"celery worker {i} did not start; see {path}")
            time.sleep(0.2)
    return procs


def _stop_workers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _hashes(run) -> dict[str, str]:
    return {f"{t.param_index}:{t.day}": t.decision_hash for t in run.tasks.all()}


def _outside(run, workers: int, queued_at, seen_at, wall_s: float) -> tuple[dict[str, float], list[dict]]:
    """The run's serial part and its tasks' time outside the simulation (see the docstring)."""
    tasks = list(run.tasks.all())
    timings = [
        dict((t.result or {}).get("timings") or {}, recorded_s=_seconds(t.started_at, t.finished_at)) for t in tasks
    ]
    dispatch = _seconds(queued_at, min(t.started_at for t in tasks))
    aggregate = _seconds(max(t.finished_at for t in tasks), seen_at)
    session = sum(t.get("session_s", 0.0) for t in timings)
    prefix = f"workers_{workers}"
    return {
        f"{prefix}_dispatch_s": round(dispatch, 3),
        f"{prefix}_aggregate_s": round(aggregate, 3),
        f"{prefix}_serial_fraction": round((dispatch + aggregate) / wall_s, 4),
        f"{prefix}_outside_session_fraction": round(1 - session / (workers * wall_s), 4),
    }, timings


def _seconds(start, end) -> float:
    return max((end - start).total_seconds(), 0.0)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, default=10, help="Minutes of each simulated session (default 10).")
    p.add_argument("--days", type=int, default=10, help="Trading days (default 10).")
    p.add_argument("--postgres", default=PG_DEFAULT)
    p.add_argument("--redis", default=REDIS_DEFAULT)
    args = p.parse_args()
    if not all(h in args.postgres + args.redis for h in ("127.0.0.1",)):
        raise SystemExit("the benchmark talks only to 127.0.0.1")
    var_dir = tempfile.mkdtemp(prefix="qh-backtest-scale-")
    env = _env(args.postgres, args.redis, var_dir)
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "QUANTHUB_VAR_DIR", "LOG_LEVEL")})
    _ensure_database(args.postgres)
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
    )
    setup_django()

    import redis
    from django.conf import settings

    from trading.backtest import fanout, runner
    from trading.models import Strategy

    redis.Redis.from_url(args.redis).flushdb()  # our own Redis database: an empty queue
    Strategy.objects.filter(key="vol_oi").update(enabled=True)
    days = runner.trading_days(FIRST_DAY, FIRST_DAY + dt.timedelta(days=args.days * 2), [])[: args.days]

    def new_run(label: str):
        return fanout.create_run(
            date_from=days[0],
            date_to=days[-1],
            days=days,
            seed=settings.QUANTHUB_SEED,
            strategies=["vol_oi"],
            source="sim",
            minutes=args.minutes,
            label=label,
        )

    # The sequential reference: the same tasks, one after another, in this process.
    sequential = new_run("sequential")
    t0 = time.perf_counter()
    fanout.run_inline(sequential)
    sequential_s = time.perf_counter() - t0
    reference = _hashes(sequential)

    from django.utils import timezone

    logs = Path(var_dir)
    timings, matches, outside, per_task = {}, [], {}, []
    for workers in (1, 2):
        procs = _start_workers(workers, env, logs)
        try:
            run = new_run(f"{workers} worker(s)")
            queued_at = timezone.now()
            t0 = time.perf_counter()
            fanout.run_celery(run)
            deadline = time.monotonic() + WAIT_LIMIT_S
            while not type(run).objects.filter(pk=run.pk).exclude(report={}).exists():
                if time.monotonic() > deadline:
                    raise SystemExit(f"run {run.pk} did not finish; worker logs in {logs}")
                time.sleep(0.2)
            timings[workers] = time.perf_counter() - t0
            seen_at = timezone.now()
            run.refresh_from_db()
            matches.append(_hashes(run) == reference and run.status == "DONE")
            figures, tasks = _outside(run, workers, queued_at, seen_at, timings[workers])
            outside.update(figures)
            per_task += tasks
        finally:
            _stop_workers(procs)

    metrics = {
        f"days_{args.days}_workers_1_s": round(timings[1], 3),
        f"days_{args.days}_workers_2_s": round(timings[2], 3),
        "speedup_2_workers": round(timings[1] / timings[2], 3),
        "sequential_s": round(sequential_s, 3),
        "hashes_match_sequential": int(all(matches)),
        "minutes_per_day": args.minutes,
    }
    fixed = sum(t.get("fixed_s", 0.0) + t["recorded_s"] - t.get("total_s", 0.0) for t in per_task)
    session = sum(t.get("session_s", 0.0) for t in per_task)
    metrics.update(
        {
            "task_fixed_s_mean": round(fixed / len(per_task), 3),
            "task_session_s_mean": round(session / len(per_task), 3),
            "task_fixed_fraction": round(fixed / (fixed + session), 4),
            **outside,
            "load_average_1m": round(os.getloadavg()[0], 2),
        }
    )
    report("backtest_scale", metrics, args.json)


if __name__ == "__main__":
    main()
