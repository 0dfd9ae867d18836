"""Prometheus metrics (prometheus_client): what the engine and the web tier measure.

Every metric lives in prometheus_client's default registry of the process that
updates it, and each process exposes that registry: the engine on a port of
its own (``serve``, started by ``run_engine --metrics-port`` or
``ENGINE_METRICS_PORT``), the web tier at ``/health/metrics`` — both behind
``METRICS_TOKEN`` as a bearer token. The web endpoint adds ``StateCollector``:
gauges read from the database at scrape time (the engine's heartbeat, today's
orders, the caps), so a dead engine still shows up as one.

The code that measures calls one small function or metric here per point
(``metrics.observe_ack(...)``), so the engine, the order manager and Kill All
carry one line each and no Prometheus types. ``docs/operations.md`` describes
each metric; ``METRICS`` below is the list the dashboard and the alert rules
are checked against.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

# Latency buckets from half a millisecond (the engine's own work) to seconds (a broker round trip).
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SLOW = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- The engine --------------------------------------------------------------------
TICK_TO_INTENT = Histogram(
    "quanthub_tick_to_intent_seconds",
    "Wall time from a chain snapshot's arrival to an intent passing the risk gate.",
    buckets=FAST,
)
SNAPSHOT_TO_ACK = Histogram(
    "quanthub_snapshot_to_ack_seconds",
    "From the snapshot an order was decided on to the broker's acknowledgement (engine clock).",
    buckets=SLOW,
)
ORDER_STATES = Counter("quanthub_order_states", "Orders entering each state.", ["state"])
REJECTS = Counter("quanthub_order_rejects", "Rejected orders by reject code.", ["code"])
FEED_AGE = Gauge(
    "quanthub_feed_age_seconds", "Age of the latest valid option-chain snapshot, per underlying.", ["underlying"]
)
FEED_STALE = Gauge("quanthub_engine_feed_stale", "1 while the engine judges its market data stale.")
HEARTBEAT = Gauge("quanthub_engine_heartbeat_timestamp_seconds", "Unix time of the engine's latest heartbeat.")
DAILY_PNL = Gauge("quanthub_daily_net_pnl_rupees", "Today's net P&L as the engine last read it (after charges).")
DAILY_LOSS_CAP = Gauge("quanthub_daily_loss_cap_rupees", "The daily net loss cap in force.")
MARGIN_USED = Gauge("quanthub_margin_used_rupees", "Margin the broker reports as utilised.")
MARGIN_TOTAL = Gauge("quanthub_margin_total_rupees", "The broker's total funds (available + utilised).")
MARGIN_CAP_RATIO = Gauge("quanthub_margin_cap_ratio", "The margin utilisation cap, as a fraction of total funds.")
BREAKER_TRIPS = Counter("quanthub_breaker_trips", "Circuit breaker trips.", ["breaker"])
KILL_ALL = Histogram("quanthub_kill_all_duration_seconds", "Kill All from the button to done.", buckets=SLOW)
KILL_ALL_NOT_FLAT = Gauge("quanthub_kill_all_not_flat", "1 when the latest Kill All here finished without flat.")
PUSH_SEND = Gauge("quanthub_push_send_seconds", "Time the last dashboard push took to hand to the channel layer.")
STRATEGY_ERRORS = Counter("quanthub_strategy_errors", "Exceptions a strategy raised (contained).", ["strategy"])
RECONCILE_BREAKS = Gauge("quanthub_engine_reconciliation_breaks", "Breaks the engine's latest reconciliation left.")

# --- The web tier ------------------------------------------------------------------
REQUEST_LATENCY = Histogram(
    "quanthub_http_request_duration_seconds",
    "Web request latency, by method and route.",
    ["method", "route"],
    buckets=SLOW,
)
WS_CONNECTIONS = Gauge("quanthub_websocket_connections", "Dashboard websockets open in this process.")
PUSH_LAG = Histogram(
    "quanthub_ws_push_lag_seconds", "From an event's publication to its push down a websocket.", buckets=FAST
)
PUSH_LAG_LAST = Gauge("quanthub_ws_push_lag_last_seconds", "Push lag of the latest websocket push.")
HOST_CPU = Gauge("quanthub_host_cpu_ratio", "Busy fraction of the host's CPUs since the previous scrape.")

# Names as Prometheus shows them (counters gain _total, histograms _bucket/_sum/_count).
STATE_METRICS = {
    "quanthub_engine_up": "1 while the account's engine beats ACTIVE within HEALTH_ENGINE_STALE_S.",
    "quanthub_engine_heartbeat_age_seconds": "Seconds since the engine's last heartbeat row.",
    "quanthub_feed_stale": "1 when the engine's last heartbeat reports stale market data.",
    "quanthub_trading_state": "The account's trading state (1 for the current one).",
    "quanthub_net_pnl_rupees": "Today's net P&L from the books (closed trades and open positions, after charges).",
    "quanthub_loss_cap_rupees": "The daily net loss cap (RiskLimits).",
    "quanthub_open_positions": "Open positions.",
    "quanthub_open_alerts": "Alerts not yet acknowledged.",
    "quanthub_orders_today": "Orders created today, by state.",
    "quanthub_reconciliation_breaks_open": "Reconciliation breaks not yet resolved.",
    "quanthub_kill_all_last_flat": "1 if the latest Kill All ended flat, 0 if not (absent before the first).",
    "quanthub_broker_token_expiry_timestamp_seconds": "Unix time the broker's access token expires.",
    "quanthub_dashboard_events_total": "Dashboard events this process published or failed to.",
}


ENGINE_AND_WEB = (
    TICK_TO_INTENT, SNAPSHOT_TO_ACK, ORDER_STATES, REJECTS, FEED_AGE, FEED_STALE, HEARTBEAT, DAILY_PNL,
    DAILY_LOSS_CAP, MARGIN_USED, MARGIN_TOTAL, MARGIN_CAP_RATIO, BREAKER_TRIPS, KILL_ALL, KILL_ALL_NOT_FLAT,
    PUSH_SEND, STRATEGY_ERRORS, RECONCILE_BREAKS, REQUEST_LATENCY, WS_CONNECTIONS, PUSH_LAG, PUSH_LAG_LAST,
    HOST_CPU,
)  # fmt: skip
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every series name this code can expose, as PromQL names it (counters with
    _total, histograms' _bucket/_sum/_count), plus Prometheus' own ``up`` and the
    client's process metrics: what the dashboard and the alert rules may use."""
    names = set(STATE_METRICS) | {"up", "process_cpu_seconds_total", "process_resident_memory_bytes"}
    for collector in ENGINE_AND_WEB:
        for family in collector.describe():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


# --- One-line calls from the code that measures ----------------------------------------


def observe_tick_to_intent(seconds: float) -> None:
    TICK_TO_INTENT.observe(seconds)


def observe_ack(snapshot_at: dt.datetime | None, acked_at: dt.datetime | None) -> None:
    if snapshot_at is not None and acked_at is not None:
        SNAPSHOT_TO_ACK.observe(max(0.0, (acked_at - snapshot_at).total_seconds()))


def order_state(state: str, reject_code: str | None = None) -> None:
    ORDER_STATES.labels(state).inc()
    if state == "REJECTED":
        REJECTS.labels(reject_code or "UNKNOWN").inc()


def engine_beat_health(health: dict) -> dict:
    """With each heartbeat (once a wall-clock second): the feed's age per
    underlying, whether it is stale, and the beat's time. Takes and returns the
    heartbeat's feed-health dict, so the engine wraps what it writes anyway."""
    for underlying, age in (health.get("chain_age_s") or {}).items():
        FEED_AGE.labels(underlying).set(age)
    FEED_STALE.set(1 if health.get("stale") else 0)
    HEARTBEAT.set(time.time())
    return health


def daily_pnl(pnl, cap=None) -> None:
    if pnl is not None:
        DAILY_PNL.set(float(pnl))
    if cap is not None:
        DAILY_LOSS_CAP.set(float(cap))


def funds(figures: Mapping[str, object], cap_pct=None) -> None:
    """The broker's funds as the engine keeps them (strings of rupees)."""
    if figures.get("utilised") is not None:
        MARGIN_USED.set(float(figures["utilised"]))
    if figures.get("total") is not None:
        MARGIN_TOTAL.set(float(figures["total"]))
    if cap_pct is not None:
        MARGIN_CAP_RATIO.set(float(cap_pct) / 100)


def breaker_tripped(breaker: str) -> None:
    BREAKER_TRIPS.labels(breaker).inc()


def kill_all_finished(seconds: float, flat: bool) -> None:
    KILL_ALL.observe(seconds)
    KILL_ALL_NOT_FLAT.set(0 if flat else 1)


def strategy_error(strategy: str) -> None:
    STRATEGY_ERRORS.labels(strategy).inc()


def reconciled(breaks: int) -> None:
    RECONCILE_BREAKS.set(breaks)


def push_sent(seconds: float) -> None:
    PUSH_SEND.set(seconds)


def pushed(event: Mapping) -> None:
    """A consumer sent an event down its websocket: lag from its publication."""
    sent_at = event.get("published_at")
    if isinstance(sent_at, int | float):
        lag = max(0.0, time.time() - sent_at)
        PUSH_LAG.observe(lag)
        PUSH_LAG_LAST.set(lag)


# --- Exposition ----------------------------------------------------------------------


def authorised(header: str, token: str) -> bool:
    given = header.removeprefix("Bearer ").strip()
    return bool(token) and secrets.compare_digest(given.encode(), token.encode())


class _Handler(BaseHTTPRequestHandler):
    token = ""

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        if not authorised(self.headers.get("Authorization", ""), self.token):
            self.send_response(401)
            self.send_header("Content-Type", "text/plain")
            self.send_header("WWW-Authenticate", "Bearer")
            self.end_headers()
            self.wfile.write(b"A bearer token is required.\n")
            return
        body = generate_latest(REGISTRY)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_PLAIN_0_0_4)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 — scrapes every few seconds are not news
        return


def serve(port: int, host: str, token: str) -> ThreadingHTTPServer:
    """The engine's metrics endpoint, in a daemon thread: scrapes never touch the
    event loop, and the thread reads only in-memory metrics (no database)."""
    handler = type("MetricsHandler", (_Handler,), {"token": token})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="engine-metrics", daemon=True).start()
    log.info("engine metrics serving", extra={"host": host, "port": server.server_address[1]})
    return server


def middleware(get_response):
    """Request latency by route (the URL pattern, not the path: bounded labels)."""

    def route_of(request) -> str:
        match = getattr(request, "resolver_match", None)
        return (match.route or match.view_name or "?") if match is not None else "unmatched"

    if iscoroutinefunction(get_response):

        async def timed_async(request):
            began = time.perf_counter()
            response = await get_response(request)
            REQUEST_LATENCY.labels(request.method, route_of(request)).observe(time.perf_counter() - began)
            return response

        return markcoroutinefunction(timed_async)

    def timed(request):
        began = time.perf_counter()
        response = get_response(request)
        REQUEST_LATENCY.labels(request.method, route_of(request)).observe(time.perf_counter() - began)
        return response

    return timed


middleware.sync_capable = True
middleware.async_capable = True


# --- Host CPU --------------------------------------------------------------------------

_cpu_lock = threading.Lock()
_cpu_last: tuple[int, int] | None = None


def sample_host_cpu(stat: Path = Path("/proc/stat")) -> float | None:
    """Busy fraction of all CPUs since the previous call (Linux /proc/stat); the
    first call compares with boot. None where /proc/stat is not there."""
    global _cpu_last
    try:
        fields = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    with _cpu_lock:
        last, _cpu_last = _cpu_last, (idle, total)
    if last is not None and total > last[1]:
        idle, total = idle - last[0], total - last[1]
    ratio = 1 - idle / total if total else 0.0
    HOST_CPU.set(ratio)
    return ratio


def token_expiry(token: str) -> float | None:
    """A Dhan access token is a JWT: its ``exp`` claim, read without verifying
    (only to know when to renew it; the token itself goes nowhere)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None
