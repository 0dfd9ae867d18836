"""Order path latency on the paper broker: intent → broker send, including the
durable commit of the intent (NEW), the SUBMITTING update and the limiter.
Also intent → acknowledgement. SQLite (a temporary file) and, when DATABASE_URL
points at PostgreSQL (or --postgres URL), PostgreSQL.

    python benchmarks/oms.py [--json PATH] [--postgres URL] [--orders N]

The limiter runs at a high rate here: at 9 orders/s it would measure the
exchange's rule, not our path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, parser, report  # noqa: E402


def run_one(url: str, orders: int, tmp: str) -> dict:
    env = {**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "error", "QUANTHUB_VAR_DIR": tmp}
    env.pop("REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(orders)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if out.returncode:
        raise SystemExit(f"oms benchmark on {url.split('@')[-1]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(orders: int) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    import asyncio
    import datetime as dt
    import time
    from decimal import Decimal

    import django
    import numpy as np

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from marketdata.book import Quote, QuoteBook
    from marketdata.demo import ensure_demo_instruments
    from marketdata.models import Instrument
    from quanthub.clock import RealClock
    from trading.brokers.paper import PaperBroker
    from trading.brokers.ratelimit import RateLimiter
    from trading.models import Order
    from trading.orders.manager import OrderManager

    ensure_demo_instruments()
    option = (
        Instrument.objects.select_related("underlying")
        .filter(kind="CE", underlying__symbol="NIFTY")
        .order_by("expiry", "strike")[30]
    )
    book = QuoteBook()
    now = dt.datetime.now(tz=dt.UTC)
    book.set(Quote(option.security_id, 99.95, 100.0, 10**7, 10**7, 100.0, now))
    book.set(Quote(option.underlying.security_id, 24499.95, 24500.05, 10**6, 10**6, 24500.0, now))
    clock = RealClock()
    oms = OrderManager(
        PaperBroker(clock=clock, book=book, capital=Decimal("10000000000")),
        RateLimiter(rate=100_000),
        clock=clock,
        book=book,
    )

    async def go():
        for i in range(orders):
            side = "BUY" if i % 2 == 0 else "SELL"
            price = Decimal("100.00") if side == "BUY" else Decimal("99.95")
            intent = clock.now()
            await oms.submit(
                instrument=option, side=side, quantity=option.lot_size, limit_price=price, intent_at=intent
            )

    began = time.perf_counter()
    asyncio.run(go())
    elapsed = time.perf_counter() - began
    rows = list(Order.objects.values_list("intent_at", "sent_at", "acked_at"))[20:]  # after warm-up
    sent = np.array([(s - i).total_seconds() * 1000 for i, s, _ in rows])
    acked = np.array([(a - i).total_seconds() * 1000 for i, _, a in rows if a])
    print(
        json.dumps(
            {
                "p50": float(np.percentile(sent, 50)),
                "p99": float(np.percentile(sent, 99)),
                "ack_p99": float(np.percentile(acked, 99)),
                "orders_per_s": orders / elapsed,
            }
        )
    )


def main() -> None:
    args_parser = parser(__doc__.splitlines()[0])
    args_parser.add_argument("--postgres", help="PostgreSQL URL (default: DATABASE_URL if it is one).")
    args_parser.add_argument("--orders", type=int, default=500)
    args = args_parser.parse_args()
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = run_one(f"sqlite:///{tmp}/oms.sqlite3", args.orders, tmp)
        metrics.update(sqlite_p50_ms=sqlite["p50"], sqlite_p99_ms=sqlite["p99"], sqlite_ack_p99_ms=sqlite["ack_p99"])
        url = os.environ.get("DATABASE_URL", "")
        pg = args.postgres or (url if url.startswith("postgres") else "")
        if pg:
            result = run_one(pg, args.orders, tmp)
            metrics.update(
                postgres_p50_ms=result["p50"], postgres_p99_ms=result["p99"], postgres_ack_p99_ms=result["ack_p99"]
            )
        else:
            print("(no PostgreSQL URL: set DATABASE_URL or --postgres to measure it)")
    report("oms", metrics, args.json)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
    else:
        main()
