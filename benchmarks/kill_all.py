"""Kill All on the paper broker with the real rate limiter (9 orders/s, exits in
the priority lane): 20 runs each for 5, 10 and 18 legs. Time until every exit
is sent, and until the book is flat.

    python benchmarks/kill_all.py [--json PATH] [--runs N]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, report, setup_django  # noqa: E402


def main() -> None:
    args = parser(__doc__.splitlines()[0])
    args.add_argument("--runs", type=int, default=20)
    options = args.parse_args()
    tmp = tempfile.mkdtemp()
    os.environ["QUANTHUB_VAR_DIR"] = tmp
    os.environ.pop("REDIS_URL", None)
    setup_django(f"sqlite:///{tmp}/kill_all.sqlite3")
    import asyncio
    import datetime as dt
    from decimal import Decimal

    import numpy as np
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from marketdata.book import Quote, QuoteBook
    from marketdata.demo import ensure_demo_instruments
    from marketdata.models import Instrument
    from quanthub.clock import RealClock
    from risk.killswitch import kill_all
    from trading.brokers.paper import PaperBroker
    from trading.brokers.ratelimit import RateLimiter
    from trading.orders.manager import OrderManager

    ensure_demo_instruments()
    instruments = list(
        Instrument.objects.select_related("underlying")
        .filter(kind__in=["CE", "PE"], is_active=True)
        .order_by("underlying__symbol", "strike", "kind")[:18]
    )
    clock = RealClock()
    book = QuoteBook()
    now = dt.datetime.now(tz=dt.UTC)
    for i, inst in enumerate(instruments):
        book.set(Quote(inst.security_id, 100.0 + i, 100.05 + i, 10**6, 10**6, 100.0 + i, now))
    for sid in ("13", "25"):
        book.set(Quote(sid, 24499.95, 24500.05, 10**6, 10**6, 24500.0, now))

    async def run(account: str, legs: int):
        broker = PaperBroker(account=account, clock=clock, book=book, capital=Decimal("100000000"))
        opener = OrderManager(broker, RateLimiter(rate=100_000), account=account, clock=clock, book=book)
        for inst in instruments[:legs]:
            await opener.submit(
                instrument=inst,
                side="BUY",
                quantity=inst.lot_size,
                limit_price=Decimal(str(book.get(inst.security_id).ask)),
                check_slippage_rule=False,
            )
        oms = OrderManager(broker, RateLimiter(rate=9), account=account, clock=clock, book=book)
        summary = await kill_all(broker=broker, oms=oms, actor="benchmark", reason="benchmark", account=account)
        assert summary.flat and summary.sent == legs, summary
        return summary.sent_s, summary.flat_s

    metrics = {}
    for legs in (5, 10, 18):
        results = [asyncio.run(run(f"bench-{legs}-{i}", legs)) for i in range(options.runs)]
        sent = np.array([r[0] for r in results])
        flat = np.array([r[1] for r in results])
        metrics[f"legs_{legs}_sent_median_s"] = float(np.median(sent))
        metrics[f"legs_{legs}_sent_max_s"] = float(sent.max())
        metrics[f"legs_{legs}_flat_max_s"] = float(flat.max())
    report("kill_all", metrics, options.json)


if __name__ == "__main__":
    main()
