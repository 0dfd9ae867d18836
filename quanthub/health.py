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
from django.db import connection
from django.http import HttpRequest, JsonResponse
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
