"""Dashboard fan-out over channels-redis: N websocket clients on daphne and on
uvicorn, a publisher standing in for the engine (the heartbeat that re-renders
positions and the other live panels every second, the option chain every 3 s); publish → receive latency and dropped messages.

    REDIS_URL=redis://127.0.0.1:6379/10 python benchmarks/fanout.py [--json PATH]
        [--clients 50,200] [--servers daphne,uvicorn] [--seconds N] [--client-procs N]

Each configuration gets a fresh server process (on a SQLite file in a temporary
directory, or on PostgreSQL when DATABASE_URL is one) and its own dashboard
group, so runs never see each other's channels. Clients log in with a real
session cookie as a Trader and go through the same consumer, origin check and
renderers as a browser. The publisher calls ``trading.events.asend_now`` from
an asyncio loop, as the engine does; a wrapper around each renderer stamps a
sequence number and ``time.time_ns()`` before rendering, in one extra hidden
element. Clients timestamp each frame as it arrives, so latency is publish call
→ frame read by the client, rendering, Redis and the server's fan-out included.
A missing sequence number at a client is a dropped message.
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
# The panels of the overview page, the one a trader keeps open (trading.views.overview).
PAGE_PANELS = "overview,killall,risk,positions,scorecards,alerts"  # one client process per 100 clients; see the README


# --- the statistics (pure, tested in trading/tests/test_fanout_smoke.py) ---------


def marker_html(kind: str, seq: int, sent_ns: int, rendered_ns: int) -> str:
    """The hidden element the benchmark adds to each pushed frame: the publish
    call's start and the moment the panels were rendered (``time.time_ns()``)."""
    return (
        f'<span id="{MARKER_ID}" hx-swap-oob="true" data-kind="{kind}" '
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


def summarise(published: list[int], clients: list[dict[str, Any]]) -> dict[str, float]:
    """p50/p99 over every frame at every client (publish call → frame read, and
    render end → frame read), and drops summed over clients."""
    latencies = [ms for client in clients for ms in client["latencies_ms"]]
    delivery = [ms for client in clients for ms in client["delivery_ms"]]
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "delivery_p50_ms": percentile(delivery, 50),
        "delivery_p99_ms": percentile(delivery, 99),
        "max_ms": max(latencies) if latencies else math.nan,
        "dropped": sum(dropped(published, client["seqs"]) for client in clients),
        "received": len(latencies),
    }


# --- the clients (in their own processes) --------------------------------------


async def _run_clients(
    url: str, cookie: str, origin: str, count: int, ready: Any, stop: Any, results: Any, index: int
) -> None:
    from websockets.asyncio.client import connect

    failures: list[str] = []
    extensions = ""
    # At most 10 handshakes at a time: each runs the session lookup, the role check and the
    # initial render on the server's one database thread, and daphne drops a handshake the
    # application has not accepted within 5 s.
    gate = asyncio.Semaphore(10)

    async def read(ws: Any, state: dict[str, Any]) -> None:
        try:
            async for frame in ws:
                arrived = time.time_ns()  # before any parsing, so our own work does not count
                marker = parse_marker(frame if isinstance(frame, str) else frame.decode())
                if marker is None:
                    state["other_frames"] += 1
                    continue
                seq, sent, rendered = marker
                if seq in state["seqs"]:
                    state["duplicates"] += 1
                state["seqs"].add(seq)
                state["latencies_ms"].append((arrived - sent) / 1e6)
                state["delivery_ms"].append((arrived - rendered) / 1e6)
        except Exception as exc:  # a dropped connection shows up as missing sequence numbers
            state["error"] = repr(exc)

    async def open_one() -> tuple[Any, dict[str, Any]] | None:
        nonlocal extensions
        state: dict[str, Any] = {
            "connect_frames": 0,
            "retries": 0,
            "connect_bytes": 0,
            "other_frames": 0,
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

    opened = [pair for pair in await asyncio.gather(*(open_one() for _ in range(count))) if pair]
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
    url: str, cookie: str, origin: str, count: int, ready: Any, stop: Any, results: Any, index: int
) -> None:
    asyncio.run(_run_clients(url, cookie, origin, count, ready, stop, results, index))


# --- the server, the user, the publisher ---------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(server: str, port: int) -> list[str]:
    venv_bin = Path(sys.executable).parent
    if server == "daphne":
        return [str(venv_bin / "daphne"), "-b", "127.0.0.1", "-p", str(port), "-v", "0", "quanthub.asgi:application"]
    if server == "uvicorn":
        return [
            str(venv_bin / "uvicorn"),
            "quanthub.asgi:application",
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


def start_server(server: str, env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen(server_command(server, port), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
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


def install_renderers(probe: dict[str, list[float]]) -> None:
    """Wrap the real renderers so each frame carries its sequence number and send
    time; note each frame's size and render time in ``probe``."""
    from trading import events

    for kind in KINDS:
        inner = events.RENDERERS.get(kind)
        if inner is None:
            raise SystemExit(f"no renderer for {kind!r} in trading.events.RENDERERS: is trading.dashboard registered?")

        def stamped(data: dict[str, Any], inner=inner, kind=kind) -> list[tuple[str, str]]:
            sent = time.time_ns()  # the publish call starts here: rendering counts
            parts = list(inner(data))
            rendered = time.time_ns()
            parts.append((MARKER_ID, marker_html(kind, data["bench_seq"], sent, rendered)))
            probe["render_ms"].append((rendered - sent) / 1e6)
            probe[f"{kind}_bytes"].append(sum(len(html.encode()) for _, html in parts))
            return parts

        events.RENDERERS[kind] = stamped


def panel_data() -> dict[str, dict[str, Any]]:
    """What the engine passes: a heartbeat, and the simulator's first NIFTY chain
    as ``trading.dashboard.chain_rows`` makes it (the engine's default width)."""
    import datetime as dt

    from marketdata.feeds.base import ChainSnapshot
    from marketdata.feeds.simulator import SimulatorFeed
    from trading.dashboard import chain_rows

    feed = SimulatorFeed(seed=7, underlyings=("NIFTY",))
    snapshot = next(item for item in feed.run_sync() if isinstance(item, ChainSnapshot))
    return {
        "heartbeat": {"engine": "fanout-bench", "at": dt.datetime.now(tz=dt.UTC).isoformat()},
        "chain": {"underlying": snapshot.underlying, "rows": chain_rows(snapshot)},
    }


async def publish(seconds: int, account: str, data: dict[str, dict[str, Any]]) -> tuple[list[int], list[str]]:
    """The heartbeat (positions and the other live panels) every second, the chain
    every third second, on the wall clock, through ``asend_now`` as the engine does."""
    from channels.layers import get_channel_layer

    from trading.events import asend_now

    # Open this loop's Redis connections first: the engine's are long open.
    await get_channel_layer().group_send("fanout-warm-up", {"type": "warm.up"})
    seq = 0
    published: list[int] = []
    failures: list[str] = []
    began = time.monotonic()
    for tick in range(seconds):
        await asyncio.sleep(max(0.0, began + tick - time.monotonic()))
        for kind in KINDS if tick % 3 == 0 else KINDS[:1]:
            seq += 1
            if await asend_now(kind, {**data[kind], "bench_seq": seq}, account=account):
                published.append(seq)
            else:
                failures.append(f"{kind} #{seq}")
    return published, failures


def run_configuration(
    server: str,
    clients: int,
    seconds: int,
    procs: int,
    env: dict[str, str],
    cookie: str,
    tmp: Path,
    data: dict[str, dict[str, Any]],
    probe: dict[str, list[float]],
) -> dict[str, float]:
    account = f"fanout-{server}-{clients}-{os.getpid()}"
    server_env = {**env, "QUANTHUB_ACCOUNT": account}
    proc, port = start_server(server, server_env, tmp / f"{server}-{clients}.log")
    ctx = mp.get_context("spawn")
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    workers = [
        ctx.Process(
            target=client_process,
            args=(
                f"ws://127.0.0.1:{port}/ws/dashboard/?panels={PAGE_PANELS}",
                cookie,
                f"http://127.0.0.1:{port}",
                n,
                ready,
                stop,
                results,
                i,
            ),
            daemon=True,
        )
        for i, n in enumerate(shares)
    ]
    try:
        began = time.monotonic()
        for worker in workers:
            worker.start()
        reports = [ready.get(timeout=180) for _ in workers]
        connect_s = time.monotonic() - began  # process start to every page showing its panels
        connected = sum(r[1] for r in reports)
        failed = sum(r[3] for r in reports)
        if connected == 0:
            raise SystemExit(
                f"{server}: no client connected: {[r[2] for r in reports]}\n"
                f"{(tmp / f'{server}-{clients}.log').read_text()[-3000:]}"
            )
        cpu_before = cpu_seconds(proc.pid)
        probe["render_ms"].clear()
        published, publish_failures = asyncio.run(publish(seconds, account, data))
        render_ms = list(probe["render_ms"])
        time.sleep(2.0)  # stragglers: anything later than this counts as dropped
        cpu_used = cpu_seconds(proc.pid) - cpu_before
        stop.set()
        payloads = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
    finally:
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        stop_server(proc)
    states = [state for _, payload in sorted(payloads) for state in payload]
    stats = summarise(published, states)
    errors = sorted({s["error"] for s in states if s["error"]})
    first = sum(s["connect_bytes"] for s in states) / max(sum(s["connect_frames"] for s in states), 1) / 1024
    print(
        f"  {server:<8} {clients:>4} clients: {connected} connected in {connect_s:.1f} s ({failed} failed), "
        f"{len(published)} published ({len(publish_failures)} failed), compression {reports[0][4] or 'none'!r}, "
        f"initial frame {first:.1f} KiB, server CPU {cpu_used / (seconds + 2) * 100:.0f}%"
        + (f", client errors {errors[:2]}" if errors else "")
        + (f", connect failures {[r[2] for r in reports if r[2]]}" if failed else ""),
        flush=True,
    )
    prefix = f"clients_{clients}_"
    return {
        prefix + "p50_ms": round(stats["p50_ms"], 2),
        prefix + "p99_ms": round(stats["p99_ms"], 2),
        prefix + "max_ms": round(stats["max_ms"], 2),
        prefix + "delivery_p50_ms": round(stats["delivery_p50_ms"], 2),
        prefix + "delivery_p99_ms": round(stats["delivery_p99_ms"], 2),
        prefix + "dropped": stats["dropped"],
        prefix + "received": stats["received"],
        prefix + "published": len(published),
        prefix + "connect_frames": sum(s["connect_frames"] for s in states),
        prefix + "connect_failed": failed,
        prefix + "connect_retries": sum(s["retries"] for s in states),
        prefix + "connect_s": round(connect_s, 2),
        prefix + "render_p50_ms": round(percentile(render_ms, 50), 2),
        prefix + "render_p99_ms": round(percentile(render_ms, 99), 2),
        prefix + "server_cpu_pct": round(cpu_used / (seconds + 2) * 100, 1),
        # The fan-out's own cost, less sensitive to a busy machine than the latencies.
        prefix + "server_cpu_ms_per_frame": round(cpu_used * 1000 / max(stats["received"], 1), 3),
    }


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
    args.add_argument("--clients", default="50,200", help="Comma-separated client counts (default 50,200).")
    args.add_argument("--servers", default="daphne,uvicorn", help="Comma-separated: daphne, uvicorn.")
    args.add_argument("--seconds", type=int, default=20, help="Publishing time per configuration (default 20).")
    args.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help=f"Client processes (default: one per {CLIENTS_PER_PROCESS} clients).",
    )
    options = args.parse_args()
    counts = [int(n) for n in options.clients.split(",") if n]
    servers = [s.strip() for s in options.servers.split(",") if s.strip()]
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

    call_command("migrate", verbosity=0)
    cookie = trader_cookie()
    probe: dict[str, list[float]] = {"render_ms": [], **{f"{kind}_bytes": [] for kind in KINDS}}
    install_renderers(probe)
    data = panel_data()
    from trading import events

    for kind in KINDS:  # compile the templates once, as a running engine has
        events.RENDERERS[kind]({**data[kind], "bench_seq": 0, "account": "fanout-warm-up"})
    env = {**os.environ, "LOG_LEVEL": "error", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    print(f"fanout: Redis {redis_url}, database {database_url.split('@')[-1]}, {options.seconds} s each", flush=True)
    metrics: dict[str, dict[str, float]] = {}
    try:
        for server in servers:
            metrics[server] = {}
            for count in counts:
                procs = options.client_procs or max(1, math.ceil(count / CLIENTS_PER_PROCESS))
                result = run_configuration(server, count, options.seconds, procs, env, cookie, tmp, data, probe)
                metrics[server].update(result)
    finally:
        cleanup_redis(redis_url)
    shutil.rmtree(tmp, ignore_errors=True)  # kept on failure: the server logs are in it
    for kind in KINDS:
        values = probe[f"{kind}_bytes"]
        print(f"  {kind} frame: {sum(values) / max(len(values), 1) / 1024:.1f} KiB on average")
    table(metrics)
    if options.json:
        Path(options.json).write_text(json.dumps({"benchmark": "fanout", "metrics": metrics}, indent=2) + "\n")
        print(f"\nwrote {options.json}")


if __name__ == "__main__":
    main()
