"""One full simulated session (09:15–15:30, NIFTY and BANKNIFTY, a chain every
3 s each, LTP every second) through the whole engine — validation, book,
strategy, gate, OMS on the paper broker, storage writes — at full speed, on
SQLite (a temporary file) and, when DATABASE_URL points at PostgreSQL (or
--postgres URL), on PostgreSQL (in a new database on that server, dropped after
the run: the decision hash covers this session's rows only).

    python benchmarks/replay.py [--json PATH] [--postgres URL] [--minutes N] [--debug]

The session runs as deployed, with ``DEBUG`` off (``docker/compose.yaml``): with it on,
Django's debug cursor records every statement, and on SQLite it runs one more query per
statement to quote the parameters: CPU a deployment does not spend (one loaded pair of
30-minute runs: 11.0 → 8.7 s; on a quiet machine the difference was within the noise).
``--debug`` runs it with the settings' development default instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, as_deployed, fresh_postgres, parser, report  # noqa: E402


def run_one(url: str, minutes: int, tmp: str, debug: bool = False) -> dict:
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "error", "QUANTHUB_VAR_DIR": tmp}
    env.pop("REDIS_URL", None)
    if not debug:
        env = as_deployed(env)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(minutes)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode:
        raise SystemExit(f"replay benchmark on {url.split('@')[-1]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def books_hash() -> str:
    """The decision hash of the session (``trading.backtest.report``), over the default
    account's books: the same data and seed give the same hash however fast the run."""
    from audit.models import AuditRecord
    from trading.backtest.report import _Ids, audit_rows, decision_hash, decision_log
    from trading.models import Order, Signal

    log = decision_log(0, "default")
    orders = list(Order.objects.filter(account="default").order_by("pk"))
    ids = _Ids(0, "default", orders)
    log["signals"] = [
        {
            "key": s.key,
            "instrument": s.instrument.security_id,
            "features": s.features,
            "phase": s.phase,
            "detected_at": s.detected_at.isoformat(),
            "confirmed_at": s.confirmed_at and s.confirmed_at.isoformat(),
            "closed_at": s.closed_at and s.closed_at.isoformat(),
        }
        for s in Signal.objects.select_related("instrument").order_by("detected_at", "key")
    ]
    log["audit"] = audit_rows(AuditRecord.objects.filter(subject__regex=r"^(order|signal):"), ids)
    return decision_hash(log)


def child(minutes: int) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    import asyncio
    import datetime as dt
    import time

    import django
    import numpy as np

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from marketdata.book import QuoteBook
    from marketdata.demo import ensure_demo_instruments
    from marketdata.feeds.simulator import SimulatorFeed
    from marketdata.storage import SnapshotWriter
    from quanthub.clock import IST, SimulatedClock
    from trading.brokers.paper import PaperBroker
    from trading.engine.engine import Engine
    from trading.models import Strategy

    day = dt.date(2026, 11, 23)
    ensure_demo_instruments(day)
    Strategy.objects.filter(key="vol_oi").update(enabled=True)
    clock = SimulatedClock(dt.datetime(2026, 11, 23, 9, 14, 59, tzinfo=IST))
    book = QuoteBook()
    end = (dt.datetime(2026, 1, 1, 9, 15) + dt.timedelta(minutes=minutes)).time()
    feed = SimulatorFeed(clock=clock, seed=7, scenario="default", trading_day=day, end_time=end)
    engine = Engine(
        feed=feed, broker=PaperBroker(clock=clock, book=book), clock=clock, book=book, writer=SnapshotWriter()
    )
    began, began_cpu = time.perf_counter(), time.process_time()
    stats = asyncio.run(engine.run())
    elapsed, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    latencies = np.array(stats.tick_to_intent_ms or [0.0])
    decisions = books_hash()
    print(
        json.dumps(
            {
                "session_s": elapsed,
                "cpu_s": cpu,
                "snapshots": stats.snapshots,
                "orders": stats.orders,
                "snapshots_per_s": stats.snapshots / elapsed,
                "p50": float(np.percentile(latencies, 50)),
                "p99": float(np.percentile(latencies, 99)),
                "intents": len(stats.tick_to_intent_ms),
                "max": float(latencies.max()),
                "decision_hash": decisions,
            }
        )
    )


def main() -> None:
    args_parser = parser(__doc__.splitlines()[0])
    args_parser.add_argument("--postgres", help="PostgreSQL URL (default: DATABASE_URL if it is one).")
    args_parser.add_argument("--minutes", type=int, default=375, help="Session length (375 = 09:15–15:30).")
    args_parser.add_argument("--debug", action="store_true", help="Run with DEBUG on (the development default).")
    args = args_parser.parse_args()
    metrics: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        result = run_one(f"sqlite:///{tmp}/replay.sqlite3", args.minutes, tmp, args.debug)
        metrics.update(
            sqlite_session_s=result["session_s"],
            sqlite_cpu_s=result["cpu_s"],
            snapshots_per_s=result["snapshots_per_s"],
            tick_to_intent_p50_ms=result["p50"],
            tick_to_intent_p99_ms=result["p99"],
            # The p99 is over this many intents (one per passed intent): near the slowest two.
            tick_to_intent_count=result["intents"],
            tick_to_intent_max_ms=result["max"],
            orders=result["orders"],
            sqlite_decision_hash=result["decision_hash"],
        )
        url = os.environ.get("DATABASE_URL", "")
        pg = args.postgres or (url if url.startswith("postgres") else "")
        if pg:
            with fresh_postgres(pg) as scratch:
                pg_result = run_one(scratch, args.minutes, tmp, args.debug)
            metrics.update(
                postgres_session_s=pg_result["session_s"],
                postgres_cpu_s=pg_result["cpu_s"],
                postgres_decision_hash=pg_result["decision_hash"],
            )
    report("replay", metrics, args.json)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
    else:
        main()
