"""Dashboard fan-out over channels-redis: N websocket clients on one or more web
processes, a publisher standing in for the engine; publish → receive latency,
dropped frames and the engine's cost of one publish.

    REDIS_URL=redis://127.0.0.1:6379/10 python benchmarks/fanout.py [--json PATH]
        [--clients 200] [--servers daphne,uvicorn] [--book 200:1,1000:2]
        [--seconds N] [--client-procs N]

Two kinds of run. ``--clients`` on an empty account (the earlier figures,
``clients_<n>_*``), and ``--book CLIENTS:WEB_PROCESSES`` on a trading book (10
open positions with Greeks, 40 orders, open alerts, the full NIFTY chain;
``book_clients_<n>_*``), with the clients split evenly between the web
processes as a load balancer would. Each configuration gets fresh daphne (or
uvicorn) processes on one SQLite file in a temporary directory (or PostgreSQL
when DATABASE_URL is one) and its own dashboard group. Clients log in with a real
session cookie as a Trader; three of four show the overview page
(``?panels=overview,killall,risk,positions,scorecards,alerts``), one of four the
NIFTY option chain. The publisher does what the engine does, from an asyncio
loop: each second it marks the book's positions (a random walk of their mids)
and publishes the heartbeat fact through ``trading.events.asend_now``; every
third second it publishes the next simulated chain. The web processes render the
panels (once per fact per process) and send each page the panels it shows whose
content changed. They run ``benchmarks/fanout_asgi.py``: the real application,
with one hidden element added to the positions and chain panels carrying the
fact's sequence number, the publish call's ``time.time_ns()`` and the render's end.
Clients take the time as each frame is read, so latency is publish call → frame
read, the web tier's rendering, Redis and the fan-out included. A sequence number
a page should have had and never got is a dropped frame. ``engine_ms_per_push`` is
the publish call itself (what the engine's tick waits for per heartbeat: the fact
queued; a task of the same loop then sends it to Redis);
``engine_ms_per_push_rendering`` is what the engine spent before the web tier
rendered: the heartbeat's four panels rendered from the database, then sent.
Everything stays on 127.0.0.1 and each configuration runs ``--seconds``.
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing as mp
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, parser, setup_django  # noqa: E402

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/10"
MARKER_ID = "bench-seq"
MARKER = re.compile(r'data-seq="(\d+)" data-t="(\d+)" data-r="(\d+)"')
KINDS = ("heartbeat", "chain")  # the engine's kinds: positions ride on the heartbeat
CLIENTS_PER_PROCESS = 100
CONNECT_ATTEMPTS = 4
HANDSHAKES_IN_FLIGHT = 20
STRAGGLERS_S = 10.0
# The panels of the overview page, the one a trader keeps open (trading.views.overview),
# and of the option chain page; which kind of fact each page should receive.
PAGE_PANELS = "overview,killall,risk,positions,scorecards,alerts"
CHAIN_PANELS = "chain-NIFTY"
PAGES = ((PAGE_PANELS, "heartbeat"), (PAGE_PANELS, "heartbeat"), (PAGE_PANELS, "heartbeat"), (CHAIN_PANELS, "chain"))
BOOK_POSITIONS = 10
BOOK_ORDERS = 40
BOOK_ALERTS = 6


# --- the statistics (pure, tested in trading/tests/test_fanout_smoke.py) ---------


def marker_html(kind: str, seq: int, sent_ns: int, rendered_ns: int, panel: str = "") -> str:
    """The hidden element the benchmark adds to a pushed panel: the publish call's
    start and the moment the panel was rendered (``time.time_ns()``)."""
    suffix = f"-{panel}" if panel else ""
    return (
        f'<span id="{MARKER_ID}{suffix}" hx-swap-oob="true" data-kind="{kind}" '
        f'data-seq="{seq}" data-t="{sent_ns}" data-r="{rendered_ns}" hidden></span>'
    )


def parse_marker(frame: str) -> tuple[int, int, int] | None:
    """(sequence number, publish time, render end) of a benchmark frame; None for any other frame."""
    match = MARKER.search(frame)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def dropped(published: Iterable[int], received: Iterable[int]) -> int:
    """How many published sequence numbers one client never received."""
    return len(set(published) - set(received))


def summarise(published: list[int] | dict[str, list[int]], clients: list[dict[str, Any]]) -> dict[str, float]:
    """p50/p99 over every frame at every client (publish call → frame read, and
    render end → frame read), and drops summed over clients. ``published``: the
    sequence numbers every client should get, or per kind of fact (each client
    then expects the kind its page shows, ``client["kind"]``)."""
    latencies = [ms for client in clients for ms in client["latencies_ms"]]
    delivery = [ms for client in clients for ms in client["delivery_ms"]]
    frames = sum(len(client["latencies_ms"]) for client in clients)

    def expected(client: dict[str, Any]) -> list[int]:
        return published if isinstance(published, list) else published.get(client["kind"], [])

    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "delivery_p50_ms": percentile(delivery, 50),
        "delivery_p99_ms": percentile(delivery, 99),
        "max_ms": max(latencies) if latencies else math.nan,
        "dropped": sum(dropped(expected(client), client["seqs"]) for client in clients),
        "received": len(latencies),
        # What a page reads per timed frame: the changed panels of one fact.
        "bytes_per_frame": sum(client.get("frame_bytes", 0) for client in clients) / frames if frames else math.nan,
        # Each kind apart: the chain pages' frames are a tenth of the frames, so they can make the p99 alone.
        **{
            f"{kind}_p99_ms": percentile(
                [ms for client in clients if client.get("kind") == kind for ms in client["latencies_ms"]], 99
            )
            for kind in KINDS
        },
    }


# --- the clients (in their own processes) --------------------------------------


async def _run_clients(
    base: str, cookie: str, origin: str, count: int, ready: Any, stop: Any, results: Any, index: int, procs: int
) -> None:
    from websockets.asyncio.client import connect

    failures: list[str] = []
    extensions = ""
    # At most HANDSHAKES_IN_FLIGHT handshakes at a time over all client processes: each
    # runs the session lookup, the role check and the initial panels on its server's one
    # database thread, and daphne drops a handshake the application has not accepted
    # within 5 s. Too many at once convoy there and all time out together.
    gate = asyncio.Semaphore(max(2, HANDSHAKES_IN_FLIGHT // procs))

    async def read(ws: Any, state: dict[str, Any]) -> None:
        try:
            async for frame in ws:
                arrived = time.time_ns()  # before any parsing, so our own work does not count
                text = frame if isinstance(frame, str) else frame.decode()
                marker = parse_marker(text)
                if marker is None:
                    state["other_frames"] += 1
                    continue
                seq, sent, rendered = marker
                if seq in state["seqs"]:
                    state["duplicates"] += 1
                state["seqs"].add(seq)
                state["frame_bytes"] += len(text.encode())
                state["latencies_ms"].append((arrived - sent) / 1e6)
                state["delivery_ms"].append((arrived - rendered) / 1e6)
        except Exception as exc:  # a dropped connection shows up as missing sequence numbers
            state["error"] = repr(exc)

    async def open_one(number: int) -> tuple[Any, dict[str, Any]] | None:
        nonlocal extensions
        panels, kind = PAGES[(index + number) % len(PAGES)]
        url = f"{base}?panels={panels}"
        state: dict[str, Any] = {
            "kind": kind,
            "connect_frames": 0,
            "retries": 0,
            "connect_bytes": 0,
            "other_frames": 0,
            "frame_bytes": 0,
            "duplicates": 0,
            "latencies_ms": [],
            "delivery_ms": [],
            "seqs": set(),
            "error": "",
        }
        error = ""
        for attempt in range(CONNECT_ATTEMPTS):
            if attempt:  # back off and try again, as htmx's ws extension does
                state["retries"] += 1
                await asyncio.sleep(attempt + random.random())  # noqa: S311
            async with gate:
                try:
                    ws = await connect(
                        url, origin=origin, additional_headers={"Cookie": cookie}, max_size=2**24, open_timeout=60
                    )
                    # The current panels come first; the publisher starts once every page has them.
                    first = await asyncio.wait_for(ws.recv(), timeout=120)
                    break
                except Exception as exc:
                    error = repr(exc)
        else:
            failures.append(error)
            return None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        state["connect_frames"] += 1
        state["connect_bytes"] += len(first)
        state["task"] = asyncio.create_task(read(ws, state))
        return ws, state

    opened = [pair for pair in await asyncio.gather(*(open_one(n) for n in range(count))) if pair]
    clients = [state for _, state in opened]
    ready.put((index, len(clients), failures[:3], len(failures), extensions))
    await asyncio.to_thread(stop.wait)
    await asyncio.gather(*(ws.close() for ws, _ in opened), return_exceptions=True)
    for state in clients:
        state["task"].cancel()
    payload = [
        {key: (sorted(value) if key == "seqs" else value) for key, value in state.items() if key not in ("task",)}
        for state in clients
    ]
    results.put((index, payload))


def client_process(
    base: str, cookie: str, origin: str, count: int, ready: Any, stop: Any, results: Any, index: int, procs: int
) -> None:
    asyncio.run(_run_clients(base, cookie, origin, count, ready, stop, results, index, procs))


# --- the server, the user, the publisher ---------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(server: str, port: int) -> list[str]:
    venv_bin = Path(sys.executable).parent
    if server == "daphne":
        return [str(venv_bin / "daphne"), "-b", "127.0.0.1", "-p", str(port), "-v", "0", "fanout_asgi:application"]
    if server == "uvicorn":
        return [
            str(venv_bin / "uvicorn"),
            "fanout_asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--ws",
            "websockets",
            "--log-level",
            "warning",
            "--no-access-log",
        ]
    raise SystemExit(f"unknown server {server!r}: daphne or uvicorn")


def start_server(
    server: str, env: dict[str, str], log_path: Path, profile: Path | None = None
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = log_path.open("w")
    # The application with the benchmark's marker (benchmarks/fanout_asgi.py) on the path.
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), str(ROOT)])}
    command = server_command(server, port)
    if profile is not None:  # cProfile writes its file when the server stops on SIGTERM
        command = [sys.executable, "-m", "cProfile", "-o", str(profile), *command]
    proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{server} exited at start-up:\n{log_path.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{server} did not listen on {port} within 60 s:\n{log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to tell the server's load from the machine's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def trader_cookie() -> str:
    """A logged-in Trader session, made the way ``django.contrib.auth.login`` makes one."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, get_user_model
    from django.contrib.auth.models import Group
    from django.contrib.sessions.backends.db import SessionStore

    from quanthub.roles import TRADER

    user, _ = get_user_model().objects.get_or_create(username="fanout-bench", defaults={"is_staff": True})
    user.set_password(secrets.token_urlsafe(24))
    user.save()
    user.groups.add(Group.objects.get(name=TRADER))
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def build_book(account: str) -> list[int]:
    """A trading book as the engine leaves it, made through the real order manager
    and paper broker: 10 open positions (8 options, a futures hedge per underlying)
    with Greeks, stops and time-outs, 40 orders (10 filled, 20 resting, 10
    cancelled) and open alerts. Returns the positions' ids."""
    from asgiref.sync import async_to_sync

    return async_to_sync(_build_book)(account)


async def _build_book(account: str) -> list[int]:
    import datetime as dt
    from decimal import Decimal

    from asgiref.sync import sync_to_async

    from marketdata.book import Quote, QuoteBook
    from marketdata.feeds.base import ChainSnapshot
    from marketdata.feeds.simulator import SimulatorFeed
    from marketdata.models import Instrument
    from quanthub.clock import IST
    from trading.alerts import raise_alert
    from trading.brokers.paper import PaperBroker
    from trading.brokers.ratelimit import RateLimiter
    from trading.models import Order, Position
    from trading.orders.manager import OrderManager

    now = dt.datetime.now(tz=IST)
    book = QuoteBook()
    snapshot = next(
        item for item in SimulatorFeed(seed=7, underlyings=("NIFTY",)).run_sync() if isinstance(item, ChainSnapshot)
    )
    book.update_chain(snapshot)
    sids = [str(s) for s in snapshot.security_id]
    spot = float(snapshot.underlying_ltp)

    def instruments():
        options = list(
            Instrument.objects.select_related("underlying")
            .filter(underlying__symbol="NIFTY", kind__in=["CE", "PE"], security_id__in=sids)
            .order_by("strike", "kind")
        )
        middle = len(options) // 2
        futures = list(
            Instrument.objects.select_related("underlying")
            .filter(kind="FUT", is_active=True)
            .order_by("underlying__symbol", "expiry")
            .distinct()
        )
        nearest = {}
        for f in futures:
            nearest.setdefault(f.underlying.symbol, f)
        return options[middle - 4 : middle + 4], list(nearest.values()), options[:10]

    options, futures, far = await sync_to_async(instruments)()
    for future in futures:
        level = float(round(spot)) if future.underlying.symbol == "NIFTY" else 52000.0
        book.set(Quote(future.security_id, level + 5, level + 6, 1800, 1800, level + 5.5, now))
        book.set(Quote(future.underlying.security_id, level - 0.05, level + 0.05, 10_000, 10_000, level, now))
    oms = OrderManager(
        PaperBroker(account=account, book=book, capital=Decimal("2500000")),
        RateLimiter(rate=1000),
        account=account,
        book=book,
    )

    async def order(inst, side, qty, price, purpose=Order.Purpose.ENTRY):
        return await oms.submit(
            instrument=inst, side=side, quantity=qty, limit_price=price, purpose=purpose, check_slippage_rule=False
        )

    for inst in options:  # 8 option legs, filled at the ask
        await order(inst, "BUY", inst.lot_size * 2, Decimal(str(book.get(inst.security_id).ask)))
    for future in futures:  # a futures hedge per underlying
        await order(
            future, "SELL", future.lot_size, Decimal(str(book.get(future.security_id).bid)), Order.Purpose.HEDGE
        )
    resting = []
    for k in range(30):  # 30 resting far below the touch, the last 10 then cancelled
        inst = far[k % len(far)]
        bid = Decimal(str(book.get(inst.security_id).bid))
        away = (bid * Decimal("0.9") / inst.tick_size).quantize(Decimal(1)) * inst.tick_size
        resting.append(await order(inst, "BUY", inst.lot_size, away))
    for o in resting[20:]:
        await oms.cancel(o, reason="benchmark")
    for k in range(BOOK_ALERTS):
        await sync_to_async(raise_alert)(
            "WARNING", "bench", f"Benchmark alert {k}", "A trading book's open alerts.", account=account
        )

    def greeks() -> list[int]:
        ids = []
        for k, p in enumerate(
            Position.objects.filter(account=account).exclude(net_quantity=0).select_related("instrument")
        ):
            fut = p.instrument.kind == "FUT"
            Position.objects.filter(pk=p.pk).update(
                delta=1.0 if fut else 0.5 - k * 0.05,
                gamma=0.0 if fut else 0.0012,
                theta=0.0 if fut else -9.5,
                vega=0.0 if fut else 11.2,
                stop_price=None if fut else p.average_price * Decimal("0.8"),
                target_price=None if fut else p.average_price * Decimal("1.3"),
                opened_at=now,
                ttl_seconds=None if fut else 900,
            )
            ids.append(p.pk)
        return ids

    ids = await sync_to_async(greeks)()
    count = await Order.objects.filter(account=account).acount()
    if len(ids) != BOOK_POSITIONS or count != BOOK_ORDERS:
        states = [(o.instrument_id, o.purpose, o.state, o.reason) async for o in Order.objects.filter(account=account)]
        raise SystemExit(
            f"{states}: the benchmark book has {len(ids)} positions and {count} orders, not {BOOK_POSITIONS} and {BOOK_ORDERS}"
        )
    return ids


def mark_book(position_ids: list[int], rng: random.Random) -> None:
    """What the engine does each second before its heartbeat: mark the open positions
    at their (moving) mid, a conditional update."""
    from decimal import Decimal

    from trading.models import Position
    from trading.orders.accounting import mark_to_market

    for p in Position.objects.filter(pk__in=position_ids).select_related("instrument"):
        tick = p.instrument.tick_size
        base = p.last_price or p.average_price
        price = max(tick, base + tick * rng.randint(-3, 3)).quantize(Decimal("0.01"))
        mark_to_market(p, price)
        Position.objects.filter(pk=p.pk, net_quantity=p.net_quantity).update(
            last_price=p.last_price, unrealised_pnl=p.unrealised_pnl
        )


def chain_facts(count: int) -> list[dict[str, Any]]:
    """Successive simulated NIFTY chains (the full chain, ±20 strikes) as the engine publishes them."""
    from marketdata.feeds.base import ChainSnapshot
    from marketdata.feeds.simulator import SimulatorFeed
    from trading.events import chain_fact

    facts = []
    for item in SimulatorFeed(seed=7, underlyings=("NIFTY",), strikes_each_side=20).run_sync():
        if isinstance(item, ChainSnapshot):
            facts.append(chain_fact(item))
            if len(facts) >= count:
                break
    return facts


def rendering_cost(account: str, reps: int = 10) -> float:
    """What one heartbeat cost the engine before the web tier rendered: the four
    heartbeat panels rendered from the database on its thread, then one group_send
    carrying the HTML. Median milliseconds."""
    from asgiref.sync import async_to_sync
    from channels.layers import get_channel_layer

    from trading import dashboard
    from trading.events import group_name

    layer = get_channel_layer()
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        html = "".join(dashboard.render_key(key, {}, account=account) for key in dashboard.EVENT_PANELS["heartbeat"])
        async_to_sync(layer.group_send)(group_name(f"{account}-old"), {"type": "dashboard.event", "html": html})
        times.append((time.perf_counter() - began) * 1000)
    return percentile(times, 50)


async def publish(
    seconds: int, account: str, chains: list[dict[str, Any]], position_ids: list[int]
) -> tuple[dict[str, list[int]], list[str], list[float]]:
    """Each second: mark the book, then the heartbeat fact; every third second the
    next chain fact. On the wall clock, through ``asend_now`` as the engine does."""
    from asgiref.sync import sync_to_async
    from channels.layers import get_channel_layer

    from trading.events import asend_now, flush

    # Open this loop's Redis connections first: the engine's are long open.
    await get_channel_layer().group_send("fanout-warm-up", {"type": "warm.up"})
    rng = random.Random(11)  # noqa: S311 (a simulation)
    seq = 0
    published: dict[str, list[int]] = {kind: [] for kind in KINDS}
    failures: list[str] = []
    push_ms: list[float] = []
    began = time.monotonic()
    for tick in range(seconds):
        await asyncio.sleep(max(0.0, began + tick - time.monotonic()))
        if position_ids:
            await sync_to_async(mark_book)(position_ids, rng)
        for kind in KINDS if tick % 3 == 0 else KINDS[:1]:
            seq += 1
            data = {"engine": "fanout-bench", "at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}
            if kind == "chain":
                data = chains[(tick // 3) % len(chains)]
            sent = time.perf_counter()
            ok = await asend_now(kind, {**data, "bench_seq": seq, "bench_t": time.time_ns()}, account=account)
            push_ms.append((time.perf_counter() - sent) * 1000)
            (published[kind] if ok else failures).append(seq if ok else f"{kind} #{seq}")
    # The publish call queues the fact; the loop's own task sends it. Let it finish
    # before the loop closes, as a long-running engine's loop would.
    await flush()
    return published, failures, push_ms


def run_configuration(
    server: str,
    clients: int,
    web: int,
    seconds: int,
    procs: int,
    env: dict[str, str],
    cookie: str,
    tmp: Path,
    chains: list[dict[str, Any]],
    book: bool,
    profile: Path | None = None,
) -> dict[str, float]:
    label = f"{'book-' if book else ''}{server}-{clients}"
    account = f"fanout-{label}-{os.getpid()}"
    position_ids = build_book(account) if book else []
    before_ms = rendering_cost(account) if book else math.nan
    server_env = {**env, "QUANTHUB_ACCOUNT": account}
    servers = [
        start_server(server, server_env, tmp / f"{label}-{k}.log", profile and profile / f"{label}-{k}.prof")
        for k in range(web)
    ]
    ctx = mp.get_context("spawn")
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = max(procs, web)
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = []
    for i, n in enumerate(shares):
        port = servers[i % web][1]  # the load balancer's round robin, one client process at a time
        base, origin = f"ws://127.0.0.1:{port}/ws/dashboard/", f"http://127.0.0.1:{port}"
        workers.append(
            ctx.Process(
                target=client_process, args=(base, cookie, origin, n, ready, stop, results, i, procs), daemon=True
            )
        )
    try:
        began = time.monotonic()
        for worker in workers:
            worker.start()
        reports = [ready.get(timeout=600) for _ in workers]
        connect_s = time.monotonic() - began  # process start to every page showing its panels
        connected = sum(r[1] for r in reports)
        failed = sum(r[3] for r in reports)
        if connected == 0:
            raise SystemExit(
                f"{label}: no client connected: {[r[2] for r in reports]}\n{(tmp / f'{label}-0.log').read_text()[-3000:]}"
            )
        cpu_before = sum(cpu_seconds(proc.pid) for proc, _ in servers)
        published, publish_failures, push_ms = asyncio.run(publish(seconds, account, chains, position_ids))
        time.sleep(STRAGGLERS_S)  # anything later than this after the last push counts as dropped
        cpu_used = sum(cpu_seconds(proc.pid) for proc, _ in servers) - cpu_before
        stop.set()
        payloads = [results.get(timeout=300) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
    finally:
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for proc, _ in servers:
            stop_server(proc)
    states = [state for _, payload in sorted(payloads) for state in payload]
    stats = summarise(published, states)
    errors = sorted({s["error"] for s in states if s["error"]})
    first = sum(s["connect_bytes"] for s in states) / max(sum(s["connect_frames"] for s in states), 1) / 1024
    print(
        f"  {label:<14} {web} web process(es): {connected} connected in {connect_s:.1f} s ({failed} failed), "
        f"{sum(map(len, published.values()))} published ({len(publish_failures)} failed), "
        f"compression {reports[0][4] or 'none'!r}, initial frame {first:.1f} KiB, "
        f"web CPU {cpu_used / (seconds + STRAGGLERS_S) * 100:.0f}% of a core"
        + (f", client errors {errors[:2]}" if errors else "")
        + (f", connect failures {[r[2] for r in reports if r[2]]}" if failed else ""),
        flush=True,
    )
    prefix = f"{'book_' if book else ''}clients_{clients}_"
    out = {
        prefix + "p50_ms": round(stats["p50_ms"], 2),
        prefix + "p99_ms": round(stats["p99_ms"], 2),
        prefix + "max_ms": round(stats["max_ms"], 2),
        prefix + "delivery_p50_ms": round(stats["delivery_p50_ms"], 2),
        prefix + "delivery_p99_ms": round(stats["delivery_p99_ms"], 2),
        prefix + "dropped": stats["dropped"],
        prefix + "received": stats["received"],
        prefix + "heartbeat_p99_ms": round(stats["heartbeat_p99_ms"], 2),
        prefix + "chain_p99_ms": round(stats["chain_p99_ms"], 2),
        prefix + "bytes_per_frame": round(stats["bytes_per_frame"], 0),
        prefix + "published": sum(map(len, published.values())),
        prefix + "web_processes": web,
        prefix + "connect_failed": failed,
        prefix + "connect_retries": sum(s["retries"] for s in states),
        prefix + "connect_s": round(connect_s, 2),
        prefix + "web_cpu_pct": round(cpu_used / (seconds + STRAGGLERS_S) * 100, 1),
        # The fan-out's own cost, less sensitive to a busy machine than the latencies.
        prefix + "web_cpu_ms_per_frame": round(cpu_used * 1000 / max(stats["received"], 1), 3),
        prefix + "engine_ms_per_push": round(percentile(push_ms, 50), 3),
        prefix + "engine_ms_per_push_p99": round(percentile(push_ms, 99), 3),
    }
    if book:
        out[prefix + "engine_ms_per_push_rendering"] = round(before_ms, 2)
    return out


def require_redis(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"fanout needs Redis (channels-redis) at REDIS_URL={redis_url}: {exc}") from None
    finally:
        client.close()


def cleanup_redis(redis_url: str) -> None:
    """Drop the benchmark's groups; channels-redis would otherwise keep them for a day."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match="asgi:group:dashboard.fanout-*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def table(metrics: dict[str, dict[str, float]]) -> None:
    """The servers side by side, one row per metric."""
    servers = list(metrics)
    keys = list(dict.fromkeys(key for values in metrics.values() for key in values))
    width = max(len(k) for k in keys)
    print("\nfanout")
    print(f"{'':<{width}}" + "".join(f"  {server:>12}" for server in servers))
    print("-" * (width + 14 * len(servers)))
    for key in keys:
        cells = []
        for server in servers:
            value = metrics[server].get(key, math.nan)
            cells.append(f"{value:,.2f}" if isinstance(value, float) else f"{value:,}")
        print(f"{key:<{width}}" + "".join(f"  {cell:>12}" for cell in cells))


def main() -> None:
    args = parser(__doc__.splitlines()[0])
    args.add_argument(
        "--clients", default="200", help="Empty-account client counts, comma-separated (default 200; '' for none)."
    )
    args.add_argument("--servers", default="daphne", help="Comma-separated: daphne, uvicorn (empty-account runs).")
    args.add_argument(
        "--book",
        default="200:1,1000:2",
        help="Trading-book runs as CLIENTS:WEB_PROCESSES, comma-separated (default 200:1,1000:2).",
    )
    args.add_argument("--seconds", type=int, default=20, help="Publishing time per configuration (default 20).")
    args.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help=f"Client processes (default: one per {CLIENTS_PER_PROCESS} clients).",
    )
    args.add_argument(
        "--profile",
        default="",
        help="Run each web process under cProfile, writing DIR/<configuration>-<n>.prof (slower: compare runs with it).",
    )
    options = args.parse_args()
    profile = Path(options.profile).resolve() if options.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    counts = [int(n) for n in options.clients.split(",") if n]
    servers = [s.strip() for s in options.servers.split(",") if s.strip()]
    books = [tuple(int(x) for x in item.split(":")) for item in options.book.split(",") if item]
    for server in servers:
        server_command(server, 0)  # refuse unknown names before anything starts

    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    os.environ["REDIS_URL"] = redis_url
    require_redis(redis_url)
    tmp = Path(tempfile.mkdtemp(prefix="fanout-"))
    os.environ["QUANTHUB_VAR_DIR"] = str(tmp)  # the secret key file is shared with the servers
    database_url = os.environ.get("DATABASE_URL", "")
    if not database_url.startswith("postgres"):
        database_url = f"sqlite:///{tmp}/fanout.sqlite3"
    setup_django(database_url)
    from django.core.management import call_command

    from marketdata.demo import ensure_demo_instruments

    call_command("migrate", verbosity=0)
    ensure_demo_instruments()
    cookie = trader_cookie()
    chains = chain_facts(8)
    env = {**os.environ, "LOG_LEVEL": "error", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    load = os.getloadavg()
    print(
        f"fanout: Redis {redis_url}, database {database_url.split('@')[-1]}, {options.seconds} s each, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}",
        flush=True,
    )

    def procs_for(count: int) -> int:
        return options.client_procs or max(1, math.ceil(count / CLIENTS_PER_PROCESS))

    metrics: dict[str, dict[str, float]] = {}
    try:
        for server in servers:
            for count in counts:
                result = run_configuration(
                    server, count, 1, options.seconds, procs_for(count), env, cookie, tmp, chains, False, profile
                )
                metrics.setdefault(server, {}).update(result)
        for count, web in books:
            result = run_configuration(
                "daphne", count, web, options.seconds, procs_for(count), env, cookie, tmp, chains, True, profile
            )
            metrics.setdefault("book", {}).update(result)
    finally:
        cleanup_redis(redis_url)
    shutil.rmtree(tmp, ignore_errors=True)  # kept on failure: the server logs are in it
    flat: dict[str, float] = {}
    for server, values in metrics.items():
        for key, value in values.items():
            flat[key if server in ("book", servers[0] if servers else "") else f"{server}_{key}"] = value
    if "book" in metrics:
        book_keys = [k for k in flat if k.startswith("book_clients_") and k.endswith("_dropped")]
        flat["book_dropped"] = sum(flat[k] for k in book_keys)
        pushes = [v for k, v in flat.items() if k.startswith("book_clients_") and k.endswith("_engine_ms_per_push")]
        flat["engine_ms_per_push"] = max(pushes)
        before = [v for k, v in flat.items() if k.endswith("_engine_ms_per_push_rendering")]
        flat["engine_ms_per_push_rendering"] = max(before)
    flat["load_average_1m"] = round(os.getloadavg()[0], 2)
    table(metrics)
    print(
        "\n"
        + "\n".join(
            f"{k} = {flat[k]}"
            for k in ("book_dropped", "engine_ms_per_push", "engine_ms_per_push_rendering", "load_average_1m")
            if k in flat
        )
    )
    if options.json:
        Path(options.json).write_text(
            json.dumps({"benchmark": "fanout", "metrics": flat, "by_server": metrics}, indent=2) + "\n"
        )
        print(f"\nwrote {options.json}")


if __name__ == "__main__":
    main()
