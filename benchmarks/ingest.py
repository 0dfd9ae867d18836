"""Market-data ingest: contract rows stored per second through SnapshotWriter,
on SQLite (a temporary file) and, when DATABASE_URL points at PostgreSQL (or
--postgres URL is given), on PostgreSQL with COPY into day partitions.

    python benchmarks/ingest.py [--json PATH] [--postgres URL] [--seconds N]
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


def run_one(database_url: str, seconds: int) -> float:
    """Measure in a child process, so each database gets clean settings."""
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "error"}
    env.pop("REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(seconds)],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode:
        raise SystemExit(f"ingest on {database_url.split('@')[-1]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["rows_per_s"]


def child(seconds: int) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    import datetime as dt

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from marketdata.feeds.simulator import SimulatorFeed
    from marketdata.models import ChainQuote, LtpQuote
    from marketdata.storage import SnapshotWriter

    call_command("migrate", verbosity=0)
    ChainQuote.objects.all().delete()
    LtpQuote.objects.all().delete()
    # A simulated stretch with wide chains: ±50 strikes, so one snapshot is 202 rows.
    feed = SimulatorFeed(
        seed=3,
        trading_day=dt.date(2026, 11, 23),
        strikes_each_side=50,
        end_time=(dt.datetime(2026, 1, 1, 9, 15) + dt.timedelta(seconds=seconds)).time(),
    )
    items = list(feed.run_sync())
    writer = SnapshotWriter()
    began = time.perf_counter()
    rows = 0
    for item in items:
        writer.add(item)
        if writer.pending >= 20_000:
            rows += writer.flush()
    rows += writer.flush(close_bars=True)
    elapsed = time.perf_counter() - began
    assert ChainQuote.objects.count() + LtpQuote.objects.count() == rows
    if connection.vendor == "postgresql":
        ChainQuote.objects.all().delete()
        LtpQuote.objects.all().delete()
    print(json.dumps({"rows_per_s": rows / elapsed, "rows": rows}))


def main() -> None:
    args_parser = parser(__doc__.splitlines()[0])
    args_parser.add_argument("--postgres", help="PostgreSQL URL (default: DATABASE_URL if it is one).")
    args_parser.add_argument("--seconds", type=int, default=1800, help="Simulated market seconds to store.")
    args = args_parser.parse_args()
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        metrics["sqlite_rows_per_s"] = run_one(f"sqlite:///{tmp}/ingest.sqlite3", args.seconds)
    pg = args.postgres or (
        os.environ.get("DATABASE_URL", "") if "postgres" in os.environ.get("DATABASE_URL", "") else ""
    )
    if pg:
        metrics["postgres_rows_per_s"] = run_one(pg, args.seconds)
    else:
        print("(no PostgreSQL URL: set DATABASE_URL or --postgres to measure it)")
    report("ingest", metrics, args.json)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
    else:
        main()
