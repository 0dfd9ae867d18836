"""Backup and restore of one simulated trading day, every tier.

A fresh database (a temporary SQLite file, or PostgreSQL with --postgres URL or
a PostgreSQL DATABASE_URL: a database of its own, ``<name>_restore_bench``) is
filled with one simulated session through the real writers: validated option
chains and LTP ticks (raw tier), minute bars, a derived metric per underlying
and minute, and an audit record per minute. Then ``quanthub.backup.backup``
and ``quanthub.backup.restore`` (into a scratch database) are timed, the
restored rows counted and the restored audit chain verified.

    python benchmarks/restore.py [--json PATH] [--minutes N] [--postgres URL]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, parser, report  # noqa: E402

TABLES = (
    "marketdata_chainquote",
    "marketdata_ltpquote",
    "marketdata_minutebar",
    "marketdata_derivedmetric",
    "audit_auditrecord",
)


def child(minutes: int) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    import datetime as dt

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    from audit.chain import append as audit_append
    from marketdata.feeds.base import ChainSnapshot
    from marketdata.feeds.simulator import SimulatorFeed
    from marketdata.models import DerivedMetric
    from marketdata.storage import SnapshotWriter
    from marketdata.validation import ChainValidator
    from quanthub.backup import _pg_env, backup, database_url, restore

    call_command("migrate", verbosity=0)
    day = dt.date(2026, 11, 23)
    end = (dt.datetime(2026, 1, 1, 9, 15) + dt.timedelta(minutes=minutes)).time()
    feed = SimulatorFeed(seed=7, scenario="default", trading_day=day, end_time=end)
    validator = ChainValidator()
    writer = SnapshotWriter()
    metrics: list[DerivedMetric] = []
    seen: set = set()
    fill_started = time.perf_counter()
    for item in feed.run_sync():
        if isinstance(item, ChainSnapshot):
            report_ = validator.validate(item, item.received_at)
            minute = item.exchange_time.replace(second=0, microsecond=0)
            if (minute, item.underlying) not in seen:
                seen.add((minute, item.underlying))
                metrics.append(
                    DerivedMetric(ts=minute, name="chain_quality", key=item.underlying, value=float(item.quality))
                )
                if item.underlying == "NIFTY":
                    with transaction.atomic():
                        audit_append("bench.minute", subject=minute.isoformat(), payload={"bad_rows": report_.bad_rows})
        writer.add(item)
        if writer.pending >= 50_000:
            writer.flush()
    writer.flush(close_bars=True)
    DerivedMetric.objects.bulk_create(metrics, batch_size=2000)
    fill_s = time.perf_counter() - fill_started

    def counts(cursor) -> dict[str, int]:
        out = {}
        for table in TABLES:
            cursor.execute(f"SELECT COUNT(*) FROM {table}")  # noqa: S608 (our own table names)
            out[table] = cursor.fetchone()[0]
        return out

    with connection.cursor() as cursor:
        written = counts(cursor)
    result = backup(upload=False)
    db, restore_s = restore(result.path)
    env = {**_pg_env(db), "DATABASE_URL": database_url(db), "LOG_LEVEL": "error"}
    env.pop("REDIS_URL", None)
    check = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "restore_drill", "--check-only"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    verdict = json.loads(check.stdout.strip().splitlines()[-1])
    count_script = (
        "import json, django, os; django.setup(); from django.db import connection; c = connection.cursor(); "
        f"print(json.dumps({{t: (c.execute('SELECT COUNT(*) FROM ' + t), c.fetchone()[0])[1] for t in {TABLES!r}}}))"
    )
    restored = json.loads(
        subprocess.run(
            [sys.executable, "-c", count_script],
            env={**env, "DJANGO_SETTINGS_MODULE": "quanthub.settings"},
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.strip()
    )
    print(
        json.dumps(
            {
                "backup_s": round(result.seconds, 3),
                "restore_s": round(restore_s, 3),
                "rows_restored": sum(restored.values()),
                "rows_written": sum(written.values()),
                "verify_ok": int(verdict["verify_ok"] and restored == written),
                "audit_records_verified": verdict["verified"],
                "backup_mb": round(result.size / 1e6, 1),
                "fill_s": round(fill_s, 1),
                "minutes": minutes,
                **{f"rows_{t.split('_', 1)[1]}": n for t, n in restored.items()},
            }
        )
    )
    if connection.vendor == "postgresql":
        subprocess.run(["dropdb", "--if-exists", "--force", db["NAME"]], env=_pg_env(db), check=False)


def run_one(database_url: str, minutes: int, var_dir: str) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "error", "QUANTHUB_VAR_DIR": var_dir}
    env.pop("REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(minutes)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode:
        raise SystemExit(f"restore benchmark on {database_url.split('@')[-1]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, default=375, help="Minutes of the session from 09:15 (375: the full day)")
    p.add_argument("--postgres", metavar="URL", help="Also measure on this PostgreSQL server (its own database)")
    args = p.parse_args()
    postgres = args.postgres or (
        os.environ.get("DATABASE_URL", "") if "postgres" in os.environ.get("DATABASE_URL", "") else ""
    )
    metrics: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = run_one(f"sqlite:///{tmp}/restore_bench.sqlite3", args.minutes, tmp)
    metrics.update(sqlite)
    if postgres:
        base, _, name = postgres.rpartition("/")
        bench_db = f"{name.split('?')[0]}_restore_bench"
        subprocess.run(["dropdb", "--if-exists", "--force", "-h", "127.0.0.1", "-U", "postgres", bench_db], check=False)
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", bench_db], check=True)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                pg = run_one(f"{base}/{bench_db}", args.minutes, tmp)
        finally:
            subprocess.run(
                ["dropdb", "--if-exists", "--force", "-h", "127.0.0.1", "-U", "postgres", bench_db], check=False
            )
        metrics.update({f"postgres_{k}": v for k, v in pg.items()})
    report("restore", metrics, args.json)


if __name__ == "__main__":
    main()
