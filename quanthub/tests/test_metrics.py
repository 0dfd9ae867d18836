from __future__ import annotations

import base64
import json
import re
import time

import pytest
import requests
from django.test import override_settings
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from quanthub import metrics
from risk.services import set_trading_state
from trading.alerts import raise_alert

pytestmark = pytest.mark.django_db
TOKEN = "scrape-me-please"


def _samples(body: str) -> dict[tuple[str, tuple], float]:
    """Parse the exposition the way Prometheus does (a hand-written one with an
    unescaped label value would fail here)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def test_metrics_are_off_without_a_token(client):
    with override_settings(METRICS_TOKEN=""):
        assert client.get("/health/metrics").status_code == 404


@override_settings(METRICS_TOKEN=TOKEN)
def test_metrics_need_the_bearer_token(client):
    assert client.get("/health/metrics").status_code == 401
    assert client.get("/health/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401


@override_settings(METRICS_TOKEN=TOKEN)
def test_metrics_report_the_state_of_the_account_in_prometheus_text(client):
    raise_alert("CRITICAL", "feed", "Chain stale")
    set_trading_state("HALTED", actor="risk1", reason="desk call")
    client.get("/health/live")  # a request for the latency histogram
    response = client.get("/health/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = _samples(response.content.decode())
    account = (("account", "default"),)
    assert samples[("quanthub_trading_state", (("account", "default"), ("state", "HALTED")))] == 1
    assert samples[("quanthub_trading_state", (("account", "default"), ("state", "ACTIVE")))] == 0
    assert samples[("quanthub_open_alerts", account)] == 1
    assert samples[("quanthub_engine_up", account)] == 0  # no engine in this test
    assert samples[("quanthub_net_pnl_rupees", account)] == 0
    assert samples[("quanthub_loss_cap_rupees", account)] > 0
    assert samples[("quanthub_reconciliation_breaks_open", account)] == 0
    assert ("quanthub_orders_today", (("account", "default"), ("state", "FILLED"))) in samples
    assert samples[("quanthub_http_request_duration_seconds_count", (("method", "GET"), ("route", "health/live")))] >= 1
    assert 0 <= samples[("quanthub_host_cpu_ratio", ())] <= 1


@override_settings(METRICS_TOKEN=TOKEN, QUANTHUB_ACCOUNT='desk "A"\\1')
def test_label_values_are_escaped(client):
    body = client.get("/health/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    assert 'account="desk \\"A\\"\\\\1"' in body
    assert _samples(body)[("quanthub_engine_up", (("account", 'desk "A"\\1'),))] == 0


def _jwt(exp: float) -> str:
    def part(data):
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part({'exp': exp, 'dhanClientId': 'x'})}.signature"


@override_settings(METRICS_TOKEN=TOKEN, QUANTHUB_BROKER="dhan")
def test_the_broker_token_expiry_is_exported_not_the_token(client, settings, tmp_path):
    token = _jwt(1_900_000_000)
    settings.DHAN_TOKEN_PATH = str(tmp_path / "token")
    (tmp_path / "token").write_text(token)
    body = client.get("/health/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()
    assert _samples(body)[("quanthub_broker_token_expiry_timestamp_seconds", (("account", "default"),))] == 1.9e9
    assert token not in body and token.split(".")[1] not in body
    assert metrics.token_expiry("not-a-jwt") is None


def test_the_engine_metrics_server_wants_the_token_and_serves_the_engine_metrics():
    server = metrics.serve(55615, "127.0.0.1", TOKEN)
    try:
        url = "http://127.0.0.1:55615/metrics"
        assert requests.get(url, timeout=5).status_code == 401
        assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
        assert requests.get("http://127.0.0.1:55615/other", timeout=5).status_code == 404
        metrics.observe_tick_to_intent(0.0007)
        metrics.engine_beat_health({"chain_age_s": {"NIFTY": 1.5}, "stale": False})
        response = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert response.status_code == 200
        samples = _samples(response.text)
        assert samples[("quanthub_feed_age_seconds", (("underlying", "NIFTY"),))] == 1.5
        assert samples[("quanthub_engine_feed_stale", ())] == 0
        assert time.time() - samples[("quanthub_engine_heartbeat_timestamp_seconds", ())] < 60
        assert samples[("quanthub_tick_to_intent_seconds_bucket", (("le", "0.001"),))] >= 1
    finally:
        server.shutdown()
        server.server_close()


def test_the_one_line_calls_move_the_metrics():
    def value(name, labels=None):
        return REGISTRY.get_sample_value(name, labels or {}) or 0

    before = value("quanthub_order_rejects_total", {"code": "MARGIN"})
    metrics.order_state("REJECTED", "MARGIN")
    assert value("quanthub_order_rejects_total", {"code": "MARGIN"}) == before + 1
    metrics.kill_all_finished(1.2, flat=False)
    assert value("quanthub_kill_all_not_flat") == 1
    metrics.kill_all_finished(0.8, flat=True)
    assert value("quanthub_kill_all_not_flat") == 0
    metrics.funds({"utilised": "120000.50", "total": "1000000"}, 40)
    assert (value("quanthub_margin_used_rupees"), value("quanthub_margin_cap_ratio")) == (120000.5, 0.4)
    metrics.pushed({"published_at": time.time() - 0.25})
    assert value("quanthub_ws_push_lag_last_seconds") >= 0.25
    metrics.pushed({})  # an event from an older publisher: nothing to measure
    assert value("quanthub_ws_push_lag_last_seconds") >= 0.25


def test_every_documented_metric_is_exported_and_every_exported_one_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    documented = set(re.findall(r"`((?:quanthub|process)_[a-z_]+)`", doc))
    exported = metrics.exported_names()
    assert documented <= exported, documented - exported
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in exported if name.startswith("quanthub_")}
    missing = {name for name in families if not any(d.startswith(name) for d in documented)}
    assert not missing, missing
