"""Liveness and readiness probes, outside the API's authentication.

``/health/live`` answers 200 while the process serves requests.
``/health/ready`` checks what a useful Quant Hub needs: the database, a
round trip through the channel layer, a fresh heartbeat from the engine
trading this account (``HEALTH_ENGINE_STALE_S``) and fresh market data by
that heartbeat's feed health. 200 with the details, or 503 naming what
failed. Unauthenticated, so it says which check failed and the exception's
class, never its message (a database error can carry its URL), and nothing
about hosts, processes or keys.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection, models
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

log = logging.getLogger(__name__)
CHANNEL_TIMEOUT_S = 2.0


def _failed(name: str, exc: Exception) -> dict:
    log.warning("readiness check failed", extra={"check": name, "error": repr(exc)})
    return {"ok": False, "error": type(exc).__name__}


def check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return _failed("database", exc)
    return {"ok": True}


async def _round_trip(layer) -> bool:
    channel = await layer.new_channel("health.")
    nonce = secrets.token_hex(8)
    await layer.send(channel, {"type": "health.ping", "nonce": nonce})
    message = await asyncio.wait_for(layer.receive(channel), timeout=CHANNEL_TIMEOUT_S)
    return message.get("nonce") == nonce


def check_channel_layer() -> dict:
    layer = get_channel_layer()
    if layer is None:
        return {"ok": False, "error": "no channel layer configured"}
    try:
        ok = async_to_sync(_round_trip)(layer)
    except Exception as exc:
        return _failed("channel_layer", exc)
    return {"ok": ok, "backend": type(layer).__name__}


def check_engine_and_feed() -> tuple[dict, dict]:
    from trading.models import EngineHeartbeat

    limit = settings.HEALTH_ENGINE_STALE_S
    try:
        beat = EngineHeartbeat.objects.filter(account=settings.QUANTHUB_ACCOUNT).order_by("-beat_at").first()
    except Exception as exc:
        failed = _failed("engine", exc)
        return failed, {"ok": False, "error": "no engine heartbeat"}
    if beat is None:
        return {"ok": False, "error": "no engine heartbeat"}, {"ok": False, "error": "no engine heartbeat"}
    age = round((timezone.now() - beat.beat_at).total_seconds(), 1)
    engine = {"ok": beat.role == EngineHeartbeat.Role.ACTIVE and age <= limit, "role": beat.role, "age_s": age}
    engine["max_age_s"] = limit
    health = beat.feed_health or {}
    feed = {"ok": engine["ok"] and health.get("stale") is False, "stale": health.get("stale")}
    if not engine["ok"]:
        feed["error"] = "the engine's feed health is not current"
    return engine, feed


@never_cache
@require_GET
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def ready(request: HttpRequest) -> JsonResponse:
    engine, feed = check_engine_and_feed()
    checks = {
        "database": check_database(),
        "channel_layer": check_channel_layer(),
        "engine": engine,
        "feed": feed,
    }
    failed = [name for name, result in checks.items() if not result["ok"]]
    return JsonResponse(
        {"status": "fail" if failed else "ok", "failed": failed, "checks": checks},
        status=503 if failed else 200,
    )


def _metric_lines(account: str) -> list[str]:
    from trading import events, selectors
    from trading.models import Order

    ov = selectors.overview(account)
    start = selectors._today_start(selectors.market_now(account))
    label = f'account="{account}"'
    lines = [
        "# HELP quanthub_engine_up 1 while the account's engine beats ACTIVE within the stale limit.",
        "# TYPE quanthub_engine_up gauge",
        f"quanthub_engine_up{{{label}}} {1 if ov.engine_alive else 0}",
        "# HELP quanthub_engine_heartbeat_age_seconds Seconds since the engine's last heartbeat.",
        "# TYPE quanthub_engine_heartbeat_age_seconds gauge",
        f"quanthub_engine_heartbeat_age_seconds{{{label}}} {ov.heartbeat_age_s if ov.heartbeat_age_s is not None else 'NaN'}",
        "# HELP quanthub_feed_stale 1 when the engine reports stale market data.",
        "# TYPE quanthub_feed_stale gauge",
        f"quanthub_feed_stale{{{label}}} {1 if ov.feed_health.get('stale') else 0}",
        "# HELP quanthub_trading_state The account's trading state (1 for the current one).",
        "# TYPE quanthub_trading_state gauge",
    ]
    lines += [
        f'quanthub_trading_state{{{label},state="{state}"}} {1 if ov.trading_state.state == state else 0}'
        for state in ("ACTIVE", "REDUCING", "HALTED")
    ]
    lines += [
        "# HELP quanthub_net_pnl_rupees Today's net P&L (closed trades and open positions, after charges).",
        "# TYPE quanthub_net_pnl_rupees gauge",
        f"quanthub_net_pnl_rupees{{{label}}} {ov.net_pnl}",
        "# HELP quanthub_open_positions Open positions.",
        "# TYPE quanthub_open_positions gauge",
        f"quanthub_open_positions{{{label}}} {ov.open_positions}",
        "# HELP quanthub_open_alerts Alerts not yet acknowledged.",
        "# TYPE quanthub_open_alerts gauge",
        f"quanthub_open_alerts{{{label}}} {ov.open_alerts}",
        "# HELP quanthub_orders_today Orders created today, by state.",
        "# TYPE quanthub_orders_today gauge",
    ]
    counts = dict(
        Order.objects.filter(account=account, created_at__gte=start)
        .values_list("state")
        .annotate(n=models.Count("id"))
        .values_list("state", "n")
    )
    lines += [f'quanthub_orders_today{{{label},state="{s}"}} {counts.get(s, 0)}' for s in Order.State.values]
    lines += [
        "# HELP quanthub_dashboard_events_total Dashboard events this process published or failed to.",
        "# TYPE quanthub_dashboard_events_total counter",
        f'quanthub_dashboard_events_total{{result="published"}} {events.stats["published"]}',
        f'quanthub_dashboard_events_total{{result="failed"}} {events.stats["failed"]}',
    ]
    return lines


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics, for a scraper holding ``METRICS_TOKEN`` as a bearer token.
    Without the setting the endpoint does not exist (P&L is not for anonymous eyes)."""
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("Metrics are off: set METRICS_TOKEN.")
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not secrets.compare_digest(given.encode(), token.encode()):
        return HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain")
    body = "\n".join(_metric_lines(settings.QUANTHUB_ACCOUNT)) + "\n"
    return HttpResponse(body, content_type="text/plain; version=0.0.4; charset=utf-8")
