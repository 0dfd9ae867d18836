"""Fault benchmark: the real ``manage.py run_engine`` on PostgreSQL, killed and
starved, then its books checked against the paper broker's.

    python benchmarks/faults.py [--kills N] [--json PATH] [--seed N] [--speed N]

It starts a private PostgreSQL (initdb/pg_ctl from /usr/lib/postgresql/*/bin)
and a private redis-server on their own 127.0.0.1 ports, migrates, enables the
Volume-OI strategy, and runs the engine on the simulator and the paper broker
at N× real time, on a scenario of its own with informed flow every 90 simulated
seconds (``write_dense_scenario``), with failures injected around the broker (throttles before
and after the broker took the order, 502s after it took it, 503s on the
books: ``trading/brokers/faults.py``). Then:

* ``--kills`` SIGKILLs at random moments: half of them a plain restart, half a
  takeover by a standby that was waiting for the lock;
* one PostgreSQL outage (``--pg-outage-s``, 20 s): the engine must not exit;
* one Redis outage (``--redis-outage-s``): the engine must not exit;
* a clean stop, then what a restart does — recovery and one reconciliation —
  and the books against the paper broker's (its account lives in the same
  database, so it survives every kill).

Metrics (all but ``kills`` must be 0): ``duplicates`` (a signal entered more
than once at the broker), ``orphans`` (broker orders we have no row for),
``lost_fills`` (broker trades missing from our fills), ``position_mismatches``
(instruments whose net quantity differs), ``unrepaired_breaks`` (reconciliation
breaks still open), ``engine_exits_on_db_outage``, ``orders_sent_twice_on_throttle``
(sends for a correlation id the broker already had), ``trades_exit_before_entry``
and ``pnl_contradicted`` (the day's net P&L in our books more than ₹1 from the
broker's own figure: its realised P&L plus its open quantity at our marks, less
our charges). Bounded in time; talks to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from _common import ROOT, parser, report

PYTHON = sys.executable


def pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if not found:
        raise SystemExit("needs PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
    return Path(found[-1])


def as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PrivatePostgres:
    def __init__(self, root: Path, port: int):
        self.dir, self.port, self.bin = root / "pg", port, pg_bin()
        self.log = root / "pg.log"

    def init(self) -> None:
        self.dir.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.dir.parent, "postgres", "postgres")
        subprocess.run(
            as_postgres(
                [str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            as_postgres(
                [str(self.bin / "pg_ctl"), "-D", str(self.dir), "-o", options, "-l", str(self.log), "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"


class PrivateRedis:
    def __init__(self, port: int, log: Path):
        self.port, self.log, self.proc = port, log, None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
        )
        time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.proc = None


class Engines:
    """The run_engine processes of the benchmark, with their logs."""

    def __init__(self, root: Path, env: dict, args: list[str]):
        self.root, self.env, self.args = root, env, args
        self.n = 0
        self.logs: list[Path] = []

    def spawn(self) -> subprocess.Popen:
        self.n += 1
        log = self.root / f"engine-{self.n}.log"
        self.logs.append(log)
        return subprocess.Popen(
            [PYTHON, str(ROOT / "manage.py"), "run_engine", *self.args],
            env=self.env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    def tracebacks(self) -> int:
        return sum(p.read_text(errors="replace").count("Traceback (most recent call last)") for p in self.logs)


def role_of(url: str, pid: int) -> str | None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT role FROM trading_engineheartbeat WHERE pid = %s ORDER BY beat_at DESC LIMIT 1", (pid,)
            ).fetchone()
    except psycopg.Error:
        return None
    return row[0] if row else None


def write_dense_scenario(path: Path) -> Path:
    """Informed flow every 90 simulated seconds all session, both underlyings, calls and
    puts, followed through up (the target), down (the stop) or barely (the time exit): an
    engine killed every few seconds still finds entries, scale-ups, hedges and exits to be
    killed around (the demo's default scenario has one every ten to fifteen minutes)."""
    import json

    kinds = [("NIFTY", "CE", 1, 45), ("BANKNIFTY", "PE", -1, -30), ("NIFTY", "PE", -1, 5), ("BANKNIFTY", "CE", 1, 45)]
    events, at = [], 9 * 3600 + 16 * 60
    for n in range((15 * 3600 - at) // 90):
        underlying, option_type, offset, follow = kinds[n % len(kinds)]
        events.append(
            {
                "time": f"{at // 3600:02d}:{at % 3600 // 60:02d}:{at % 60:02d}",
                "type": "informed_flow",
                "underlying": underlying,
                "option_type": option_type,
                "strike_offset": offset,
                "follow_through_pct": follow,
                "follow_minutes": 4,
            }
        )
        at += 90
    path.write_text(json.dumps({"name": "faults", "events": events}))
    return path


def wait_for(predicate, timeout: float, poll: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return False


def kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def last_weekday(day: dt.date) -> dt.date:
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return day


def outage_survivors(engine: subprocess.Popen, seconds: float, stop, start) -> int:
    """Take a service away for ``seconds``; 1 if the engine exited meanwhile or within 30 s after."""
    stop()
    exited = wait_for(lambda: engine.poll() is not None, seconds)
    start()
    if not exited:
        exited = wait_for(lambda: engine.poll() is not None, 30)
    return int(exited)


def check_books(url: str) -> dict[str, int]:
    """Restart as an engine would (recovery, one reconciliation), then compare with the broker."""
    os.environ["DATABASE_URL"] = url
    os.environ.pop("QUANTHUB_BROKER_FAULTS", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.db.models import Count, Sum

    from marketdata.book import QuoteBook
    from risk.context import daily_charges, daily_net_pnl
    from trading.brokers.paper import PaperBroker
    from trading.brokers.ratelimit import RateLimiter
    from trading.models import (
        Fill,
        Order,
        PaperOrder,
        PaperPosition,
        PaperTrade,
        Position,
        ReconciliationBreak,
        Trade,
    )
    from trading.orders.manager import OrderManager
    from trading.orders.reconcile import reconcile
    from trading.orders.root import account_clock

    clock = account_clock("default")  # the engine's time line (simulated), carried on

    async def restart():
        from asgiref.sync import sync_to_async

        broker = await sync_to_async(PaperBroker)(clock=clock, book=QuoteBook())
        oms = OrderManager(broker, RateLimiter(rate=1000), clock=clock)
        await oms.recover()
        return await reconcile(broker, clock=clock)

    result = asyncio.run(restart())
    ours = set(Order.objects.values_list("client_order_id", flat=True))
    theirs = list(PaperOrder.objects.values_list("correlation_id", flat=True))
    entered = (
        Order.objects.filter(purpose=Order.Purpose.ENTRY, client_order_id__in=theirs, signal__isnull=False)
        .values("signal")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    fills = set(Fill.objects.values_list("broker_trade_id", flat=True))
    our_net = {
        r["instrument__security_id"]: r["n"]
        for r in Position.objects.values("instrument__security_id").annotate(n=Sum("net_quantity"))
    }
    broker_net = {
        r["security_id"]: r["n"] for r in PaperPosition.objects.values("security_id").annotate(n=Sum("net_quantity"))
    }
    mismatches = sum(1 for s in set(our_net) | set(broker_net) if our_net.get(s, 0) != broker_net.get(s, 0))
    # The day's net P&L in our books against the broker's: its realised P&L plus its open
    # quantity at our marks, less our charges (the broker's figure is before charges).
    now = clock.now()
    marks = {
        r["instrument__security_id"]: r["last_price"]
        for r in Position.objects.exclude(net_quantity=0).values("instrument__security_id", "last_price")
    }
    broker_gross = sum(
        (
            p.realised_pnl + ((marks.get(p.security_id) or p.average_price) - p.average_price) * p.net_quantity
            for p in PaperPosition.objects.all()
        ),
        Decimal("0"),
    )
    ours_pnl = daily_net_pnl("default", now)
    broker_pnl = broker_gross - daily_charges("default", now)
    return {
        "duplicates": sum(r["n"] - 1 for r in entered),
        "orphans": sum(1 for cid in theirs if cid not in ours),
        "lost_fills": sum(1 for t in PaperTrade.objects.values_list("trade_id", flat=True) if t not in fills),
        "position_mismatches": mismatches,
        "unrepaired_breaks": ReconciliationBreak.objects.filter(resolved_at__isnull=True).count(),
        "breaks_at_final_reconciliation": len(result.breaks),
        "orders": Order.objects.count(),
        "broker_orders": len(theirs),
        "fills": len(fills),
        "stuck_in_flight": Order.objects.filter(state__in=["NEW", "SUBMITTING"]).count(),
        "trades_exit_before_entry": sum(1 for t in Trade.objects.all() if t.closed_at < t.opened_at),
        "pnl_contradicted": int(abs(ours_pnl - broker_pnl) > 1),  # more than ₹1 apart (rounding of fills)
        "daily_net_pnl": float(ours_pnl),
        "broker_daily_net_pnl": float(broker_pnl),
    }


def main() -> None:
    p = parser("Kill, starve and throttle the real engine on PostgreSQL; compare its books with the broker's.")
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--speed", default="20", help="Simulator speed (N× real time).")
    p.add_argument("--min-gap", type=float, default=1.5, help="Seconds between kills, at least.")
    p.add_argument("--max-gap", type=float, default=6.0, help="Seconds between kills, at most.")
    p.add_argument("--pg-port", type=int, default=55412)
    p.add_argument("--redis-port", type=int, default=56412)
    p.add_argument("--pg-outage-s", type=float, default=20.0)
    p.add_argument(
        "--loss-cap",
        type=int,
        default=10_000_000,
        help="Daily loss cap (₹) for the run: high, so it trades all session.",
    )
    p.add_argument("--redis-outage-s", type=float, default=8.0)
    p.add_argument(
        "--faults", default="throttle=0.04,throttle_after=0.04,unknown_after=0.03,books=0.005", help="Broker faults."
    )
    p.add_argument("--keep", action="store_true", help="Keep the working directory (logs, database).")
    args = p.parse_args()
    rng = random.Random(args.seed)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="qh-faults-"))
    pg, redis = PrivatePostgres(root, args.pg_port), PrivateRedis(args.redis_port, root / "redis.log")
    url = pg.url("qh_faults")
    day = last_weekday(dt.date.today() - dt.timedelta(days=1))  # noqa: DTZ011 (the simulated trading day)
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
        "QUANTHUB_VAR_DIR": str(root / "var"),
        "QUANTHUB_BROKER_FAULTS": args.faults,
        "QUANTHUB_BROKER_FAULTS_LOG": str(root / "sent_twice.log"),
        "QUANTHUB_PAPER_CAPITAL": "50000000",
        "LOG_LEVEL": "warning",
        "DJANGO_SETTINGS_MODULE": "quanthub.settings",
    }
    env.pop("QUANTHUB_ACCOUNT", None)
    scenario = write_dense_scenario(root / "scenario.json")
    engines = Engines(
        root,
        env,
        [
            "--feed",
            "sim",
            "--broker",
            "paper",
            "--speed",
            args.speed,
            "--seed",
            str(args.seed),
            "--date",
            day.isoformat(),
            "--scenario",
            str(scenario),
        ],
    )
    active = standby = None
    counts = {"kills": 0, "restarts": 0, "takeovers": 0}
    exits_on_db = exits_on_redis = unexpected_exits = 0
    try:
        pg.init()
        pg.start()
        redis.start()
        subprocess.run(
            as_postgres(
                [str(pg.bin / "createdb"), "-h", "127.0.0.1", "-p", str(args.pg_port), "-U", "postgres", "qh_faults"]
            ),
            check=True,
            capture_output=True,
        )
        setup_env = {k: v for k, v in env.items() if k != "QUANTHUB_BROKER_FAULTS"}
        # The cap is raised (--loss-cap) so that the strategy trades the whole session: the
        # benchmark is about the order path across kills, and a session HALTED by the daily
        # loss breaker after its first trades would send almost nothing to be killed around.
        raise_cap = (
            "from decimal import Decimal; from risk.models import RiskLimits; from risk.services import "
            f"save_risk_limits; l = RiskLimits.active(); l.daily_loss_cap = Decimal('{args.loss_cap}'); "
            "l.is_active = True; save_risk_limits(l, actor='cli:faults')"
        )
        for command in (
            ["migrate", "-v", "0"],
            ["seed_demo", "--enable-strategy", "--no-instruments"],
            ["shell", "-c", raise_cap],
        ):
            subprocess.run(
                [PYTHON, str(ROOT / "manage.py"), *command], env=setup_env, check=True, capture_output=True, cwd=ROOT
            )
        active = engines.spawn()
        if not wait_for(lambda: role_of(url, active.pid) == "ACTIVE", 90):
            raise SystemExit(f"the engine did not start; see {engines.logs[-1]}")
        pg_outage_at = max(args.kills // 3, 0)
        redis_outage_at = max((2 * args.kills) // 3, 0)
        for i in range(args.kills):
            takeover = i % 2 == 1
            if takeover:
                # The active engine holds the lock first; the standby then waits behind it.
                wait_for(lambda pid=active.pid: role_of(url, pid) == "ACTIVE", 60)
                standby = engines.spawn()
                wait_for(lambda pid=standby.pid: role_of(url, pid) == "STANDBY", 60)
            # Half the kills come while the engine trades, half at any moment (start-up, recovery).
            if i % 4 < 2:
                wait_for(lambda pid=active.pid: role_of(url, pid) == "ACTIVE", 60)
            time.sleep(rng.uniform(args.min_gap, args.max_gap))
            if active.poll() is not None:  # the session ended, or the engine died on its own
                print(f"engine {active.pid} exited with {active.returncode} before kill {i + 1}", file=sys.stderr)
                unexpected_exits += active.returncode != 0
            kill(active)
            counts["kills"] += 1
            if takeover:
                counts["takeovers"] += 1
                active, standby = standby, None
            else:
                counts["restarts"] += 1
                active = engines.spawn()
            if i in (pg_outage_at, redis_outage_at):
                wait_for(lambda pid=active.pid: role_of(url, pid) == "ACTIVE", 90)
                time.sleep(2)
            if i == pg_outage_at:
                exits_on_db = outage_survivors(active, args.pg_outage_s, pg.stop, pg.start)
            if i == redis_outage_at:
                exits_on_redis = outage_survivors(active, args.redis_outage_s, redis.stop, redis.start)
        if args.kills == 0:
            exits_on_db = outage_survivors(active, args.pg_outage_s, pg.stop, pg.start)
            exits_on_redis = outage_survivors(active, args.redis_outage_s, redis.stop, redis.start)
        wait_for(lambda: role_of(url, active.pid) == "ACTIVE", 90)
        time.sleep(5)
        active.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            active.wait(60)
        kill(active)
        books = check_books(url)
    finally:
        kill(active)
        kill(standby)
        redis.stop()
        pg.stop()
    sent_twice_log = root / "sent_twice.log"
    sent_twice = len(sent_twice_log.read_text().splitlines()) if sent_twice_log.exists() else 0
    metrics = {
        "kills": counts["kills"],
        "duplicates": books["duplicates"],
        "orphans": books["orphans"],
        "lost_fills": books["lost_fills"],
        "position_mismatches": books["position_mismatches"],
        "unrepaired_breaks": books["unrepaired_breaks"],
        "engine_exits_on_db_outage": exits_on_db,
        "orders_sent_twice_on_throttle": sent_twice,
        "engine_exits_on_redis_outage": exits_on_redis,
        "engine_exits_unasked": unexpected_exits,
        "restarts": counts["restarts"],
        "takeovers": counts["takeovers"],
        "orders": books["orders"],
        "broker_orders": books["broker_orders"],
        "fills": books["fills"],
        "stuck_in_flight": books["stuck_in_flight"],
        "trades_exit_before_entry": books["trades_exit_before_entry"],
        "pnl_contradicted": books["pnl_contradicted"],
        "daily_net_pnl": books["daily_net_pnl"],
        "broker_daily_net_pnl": books["broker_daily_net_pnl"],
        "tracebacks_in_engine_logs": engines.tracebacks(),
        "wall_s": round(time.monotonic() - started, 1),
    }
    report("faults", metrics, args.json)
    if args.keep:
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
