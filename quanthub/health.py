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
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from quanthub import metrics as qmetrics

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


class StateCollector:
    """Gauges read from the database at each scrape of the web endpoint: the
    engine's heartbeat and feed health as it last wrote them (so a dead engine
    still shows up), today's orders, the caps, open reconciliation breaks, the
    latest Kill All and the broker token's expiry. prometheus_client escapes the
    label values."""

    def __init__(self, account: str):
        self.account = account

    def describe(self):
        return []

    def _gauge(self, name: str, value, **labels: str) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, qmetrics.STATE_METRICS[name], labels=["account", *labels])
        family.add_metric([self.account, *labels.values()], value)
        return family

    def collect(self):
        # The apps' modules load after quanthub's (health is imported by the URLconf).
        from audit.models import AuditRecord
        from quanthub.dhan.tokens import current_token
        from risk.models import RiskLimits
        from trading import events, selectors
        from trading.models import Order
        from trading.orders.reconcile import open_breaks

        account = self.account
        ov = selectors.overview(account)
        yield self._gauge("quanthub_engine_up", 1 if ov.engine_alive else 0)
        age = ov.heartbeat_age_s
        yield self._gauge("quanthub_engine_heartbeat_age_seconds", float("nan") if age is None else age)
        yield self._gauge("quanthub_feed_stale", 1 if ov.feed_health.get("stale") else 0)
        state = GaugeMetricFamily(
            "quanthub_trading_state", qmetrics.STATE_METRICS["quanthub_trading_state"], labels=["account", "state"]
        )
        for name in ("ACTIVE", "REDUCING", "HALTED"):
            state.add_metric([account, name], 1 if ov.trading_state.state == name else 0)
        yield state
        yield self._gauge("quanthub_net_pnl_rupees", float(ov.net_pnl))
        yield self._gauge("quanthub_loss_cap_rupees", float(RiskLimits.active().daily_loss_cap))
        yield self._gauge("quanthub_open_positions", ov.open_positions)
        yield self._gauge("quanthub_open_alerts", ov.open_alerts)
        start = selectors._today_start(selectors.market_now(account))
        counts = dict(
            Order.objects.filter(account=account, created_at__gte=start)
            .values_list("state")
            .annotate(n=models.Count("id"))
            .values_list("state", "n")
        )
        orders = GaugeMetricFamily(
            "quanthub_orders_today", qmetrics.STATE_METRICS["quanthub_orders_today"], labels=["account", "state"]
        )
        for name in Order.State.values:
            orders.add_metric([account, name], counts.get(name, 0))
        yield orders
        yield self._gauge("quanthub_reconciliation_breaks_open", open_breaks(account))
        last = (
            AuditRecord.objects.filter(action="kill_all.finished", subject=f"account:{account}")
            .order_by("-seq")
            .values_list("payload", flat=True)
            .first()
        )
        if last is not None:
            yield self._gauge("quanthub_kill_all_last_flat", 1 if last.get("flat") else 0)
        expiry = qmetrics.token_expiry(current_token()) if settings.QUANTHUB_BROKER == "dhan" else None
        if expiry is not None:
            yield self._gauge("quanthub_broker_token_expiry_timestamp_seconds", expiry)
        published = CounterMetricFamily(
            "quanthub_dashboard_events", qmetrics.STATE_METRICS["quanthub_dashboard_events_total"], labels=["result"]
        )
        published.add_metric(["published"], events.stats["published"])
        published.add_metric(["failed"], events.stats["failed"])
        yield published


def exposition(account: str) -> bytes:
    """This process's metrics (request latency, websockets, push lag, host CPU),
    then the database's state."""
    qmetrics.sample_host_cpu()
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(account))
    return generate_latest(REGISTRY) + generate_latest(state)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics, for a scraper holding ``METRICS_TOKEN`` as a bearer token.
    Without the setting the endpoint does not exist (P&L is not for anonymous eyes)."""
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("Metrics are off: set METRICS_TOKEN.")
    if not qmetrics.authorised(request.headers.get("Authorization", ""), token):
        return HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain")
    return HttpResponse(exposition(settings.QUANTHUB_ACCOUNT), content_type=CONTENT_TYPE_PLAIN_0_0_4)
