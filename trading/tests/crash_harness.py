"""Crash-safety harness: kill the order path with SIGKILL at chosen points,
restart, recover, reconcile, and check that nothing was sent twice, lost or
left in a state nobody knows.

    python trading/tests/crash_harness.py --kills 200 [--seed N]      (DATABASE_URL selects the database)

Each cycle forks a child that sends a few orders through the real OMS to the
paper broker (whose account is in the same database, as an external broker's
state would survive our crash). The child kills itself at a randomly chosen
checkpoint. The parent then plays the restarted engine: ``recover()``,
``sync()``, reconciliation, and the invariants. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POINTS = (
    "oms.before_commit",
    "oms.after_commit",
    "oms.before_broker_call",
    "broker.before_commit",
    "broker.after_commit",
    "oms.after_ack",
)


def setup():
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    os.environ.setdefault("LOG_LEVEL", "error")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from marketdata.demo import ensure_demo_instruments

    ensure_demo_instruments()


def make_oms():
    import datetime as dt

    from marketdata.book import Quote, QuoteBook
    from marketdata.models import Instrument
    from quanthub.clock import RealClock
    from trading.brokers.paper import PaperBroker
    from trading.brokers.ratelimit import RateLimiter
    from trading.orders.manager import OrderManager

    option = (
        Instrument.objects.select_related("underlying")
        .filter(underlying__symbol="NIFTY", kind="CE", is_active=True)
        .order_by("expiry", "strike")[30]
    )
    book = QuoteBook()
    now = dt.datetime.now(tz=dt.UTC)
    book.set(Quote(option.security_id, 99.95, 100.0, 10**6, 10**6, 100.0, now))
    book.set(Quote(option.underlying.security_id, 24499.95, 24500.05, 10**6, 10**6, 24500.0, now))
    clock = RealClock()
    broker = PaperBroker(clock=clock, book=book, capital=Decimal("100000000"))
    return OrderManager(broker, RateLimiter(rate=10_000), clock=clock, book=book, unknown_resolve_s=0.2), option


async def work(orders: int, rng: random.Random) -> None:
    from asgiref.sync import sync_to_async

    oms, option = await sync_to_async(make_oms)()
    for _ in range(orders):
        side = rng.choice(["BUY", "SELL"])
        price = Decimal("100.00") if side == "BUY" else Decimal("99.95")
        await oms.submit(instrument=option, side=side, quantity=option.lot_size * rng.randint(1, 3), limit_price=price)


async def restart_and_check() -> dict:
    from asgiref.sync import sync_to_async
    from django.db.models import Count, Sum

    from trading.models import Fill, Order, PaperOrder, PaperPosition, PaperTrade, Position
    from trading.orders.reconcile import reconcile

    oms, _ = await sync_to_async(make_oms)()
    await oms.recover()
    await oms.sync()
    result = await reconcile(oms.broker, clock=oms.clock)

    def check() -> dict:
        stuck = Order.objects.filter(state__in=["NEW", "SUBMITTING"]).count()
        ours = set(Order.objects.exclude(broker_order_id=None).values_list("client_order_id", flat=True))
        theirs = set(PaperOrder.objects.values_list("correlation_id", flat=True))
        # An order the broker never got stays pending (UNKNOWN, looked up, never resent)
        # for its grace window; one the broker has must have been resolved.
        pending = set(Order.objects.filter(state="UNKNOWN").values_list("client_order_id", flat=True))
        unresolved = len(pending & theirs)
        duplicates = PaperOrder.objects.values("correlation_id").annotate(n=Count("id")).filter(n__gt=1).count()
        orphans_at_broker = len(theirs - set(Order.objects.values_list("client_order_id", flat=True)))
        lost = len(ours - theirs)
        trades, fills = PaperTrade.objects.count(), Fill.objects.count()
        broker_net = PaperPosition.objects.aggregate(n=Sum("net_quantity"))["n"] or 0
        our_net = Position.objects.aggregate(n=Sum("net_quantity"))["n"] or 0
        return {
            "stuck": stuck,
            "unresolved": unresolved,
            "duplicates": duplicates,
            "orphans": orphans_at_broker,
            "lost": lost,
            "unfilled_trades": trades - fills,
            "position_gap": broker_net - our_net,
            "breaks": len(result.breaks),
            "orders": Order.objects.count(),
            "broker_orders": len(theirs),
        }

    return await sync_to_async(check)()


def child(point: str, hit: int, seed: int) -> None:
    from asgiref.sync import SyncToAsync

    from trading import checkpoints

    SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)  # threads do not survive fork
    seen = Counter()

    def hook(name: str) -> None:
        if name == point:
            seen[name] += 1
            if seen[name] == hit:
                os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.install(hook)
    asyncio.run(work(3, random.Random(seed)))
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    setup()
    from asgiref.sync import SyncToAsync
    from django.db import connections

    rng = random.Random(args.seed)
    kills, cycles, by_point = 0, 0, Counter()
    worst = Counter()
    while kills < args.kills and cycles < args.kills * 3:
        cycles += 1
        point, hit = rng.choice(POINTS), rng.randint(1, 3)
        connections.close_all()
        pid = os.fork()
        if pid == 0:
            child(point, hit, rng.randrange(10**9))
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            kills += 1
            by_point[point] += 1
        SyncToAsync.single_thread_executor = ThreadPoolExecutor(max_workers=1)
        state = asyncio.run(restart_and_check())
        for key in ("stuck", "unresolved", "duplicates", "orphans", "lost", "unfilled_trades", "position_gap", "breaks"):
            worst[key] = max(worst[key], abs(state[key]))
    final = asyncio.run(restart_and_check())
    print(
        json.dumps(
            {
                "kills": kills,
                "cycles": cycles,
                "by_point": dict(by_point),
                "worst": dict(worst),
                "orders": final["orders"],
                "broker_orders": final["broker_orders"],
            }
        )
    )


if __name__ == "__main__":
    main()
