"""Kill All through the composition root: the paper broker, the account's shared
rate window (9 orders/s, exits in the priority lane). 20 runs each for 5, 10 and
18 legs: time until every exit is sent, and until the broker reports flat. Then
the faulty broker: 18 legs (options and futures of NIFTY and BANKNIFTY, three
of them above the freeze quantity, so sliced) where 20 % of the broker's order
calls fail (a reject for a stale price, a throttle, an unknown outcome, a 5xx):
time to flat, runs not flat at the deadline, and the most orders the broker
saw in any one second.

    python benchmarks/kill_all.py [--json PATH] [--runs N] [--fault-runs N]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, report, setup_django  # noqa: E402

DEADLINE_S = 15.0


def main() -> None:
    args = parser(__doc__.splitlines()[0])
    args.add_argument("--runs", type=int, default=20)
    args.add_argument("--fault-runs", type=int, default=20)
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
    from trading.brokers.chaos import ChaosBroker
    from trading.brokers.paper import PaperBroker
    from trading.orders.flatten import kill_all, slices
    from trading.orders.root import build_order_path

    ensure_demo_instruments()
    options_legs = []
    for symbol in ("NIFTY", "BANKNIFTY"):
        options_legs += list(
            Instrument.objects.select_related("underlying")
            .filter(underlying__symbol=symbol, kind__in=["CE", "PE"], is_active=True)
            .order_by("expiry", "strike", "kind")[20:29]
        )
    futures = list(Instrument.objects.select_related("underlying").filter(kind="FUT", is_active=True)[:2])
    plain = options_legs[:18]
    mixed = options_legs[:16] + futures
    clock = RealClock()
    book = QuoteBook()
    now = dt.datetime.now(tz=dt.UTC)
    for i, inst in enumerate(options_legs):
        book.set(Quote(inst.security_id, 100.0 + i, 100.05 + i, 10**6, 10**6, 100.0 + i, now))
    # Futures on their own tick (₹0.10 NIFTY, ₹0.20 BANKNIFTY), as float as a live book is.
    for inst in futures:
        tick = float(inst.tick_size)
        base = 24510.0 if inst.underlying.symbol == "NIFTY" else 52406.2
        book.set(Quote(inst.security_id, base, base + tick, 10**6, 10**6, base, now))
    for sid in ("13", "25"):
        book.set(Quote(sid, 24499.95, 24500.05, 10**6, 10**6, 24500.0, now))

    def quantity(inst, big: bool) -> int:
        # Three legs just above the freeze quantity: two orders each.
        return (inst.freeze_quantity // inst.lot_size + 1) * inst.lot_size if big else inst.lot_size

    async def open_legs(opener, legs, sliced: bool) -> int:
        orders = 0
        for n, inst in enumerate(legs):
            for part in slices(quantity(inst, sliced and n in (0, 9, len(legs) - 1)), inst):
                await opener.oms.submit(
                    instrument=inst,
                    side="BUY",
                    quantity=part,
                    limit_price=Decimal(str(book.get(inst.security_id).ask)),
                    check_slippage_rule=False,
                )
                orders += 1
        return orders

    def run(account: str, legs, fault_rate: float, seed: int):
        capital = Decimal("10000000000")
        opener = build_order_path(
            account,
            clock=clock,
            book=book,
            broker=PaperBroker(account=account, clock=clock, book=book, capital=capital),
            shared=False,
        )
        opener.limiter._rate = 100_000  # opening the legs is set-up, not measured
        paper = PaperBroker(account=account, clock=clock, book=book, capital=capital)
        broker = ChaosBroker(paper, fault_rate=fault_rate, seed=seed)
        path = build_order_path(account, clock=clock, book=book, broker=broker, shared=True)

        async def go():
            await open_legs(opener, legs, sliced=fault_rate > 0)
            return await kill_all(path, actor="cli:benchmark", reason="benchmark", deadline_s=DEADLINE_S)

        return asyncio.run(go()), broker

    metrics: dict[str, float] = {}
    for legs in (5, 10, 18):
        results = [run(f"bench-{legs}-{i}", plain[:legs], 0.0, i)[0] for i in range(options.runs)]
        for r in results:
            assert r.flat and r.legs == legs, r.summary()
        sent = np.array([r.sent_s for r in results])
        flat = np.array([r.flat_s for r in results])
        metrics[f"legs_{legs}_sent_median_s"] = float(np.median(sent))
        metrics[f"legs_{legs}_sent_max_s"] = float(sent.max())
        metrics[f"legs_{legs}_flat_max_s"] = float(flat.max())

    flat_s, not_flat, worst_window, injected = [], 0, 0, 0
    for i in range(options.fault_runs):
        result, broker = run(f"faults-{i}", mixed, 0.2, 1000 + i)
        worst_window = max(worst_window, broker.max_in_window(1.0))
        injected += sum(broker.injected.values())
        if result.flat:
            flat_s.append(result.flat_s)
        else:
            not_flat += 1
            print(f"run {i} not flat: {result.summary()}", file=sys.stderr)
    metrics["faults_18_flat_max_s"] = float(max(flat_s)) if flat_s else float("nan")
    metrics["faults_18_flat_median_s"] = float(np.median(flat_s)) if flat_s else float("nan")
    metrics["faults_18_not_flat"] = not_flat
    metrics["faults_18_max_orders_in_1s"] = worst_window
    metrics["faults_18_faults_injected"] = injected
    report("kill_all", metrics, options.json)


if __name__ == "__main__":
    main()
