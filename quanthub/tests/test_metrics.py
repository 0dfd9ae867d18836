from __future__ import annotations

import re

import pytest
from django.test import override_settings

from risk.services import set_trading_state
from trading.alerts import raise_alert

pytestmark = pytest.mark.django_db


def test_metrics_are_off_without_a_token(client):
    with override_settings(METRICS_TOKEN=""):
        assert client.get("/health/metrics").status_code == 404


@override_settings(METRICS_TOKEN="scrape-me-please")
def test_metrics_need_the_bearer_token(client):
    assert client.get("/health/metrics").status_code == 401
    assert client.get("/health/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401


@override_settings(METRICS_TOKEN="scrape-me-please")
def test_metrics_report_the_state_of_the_account_in_prometheus_text(client):
    raise_alert("CRITICAL", "feed", "Chain stale")
    set_trading_state("HALTED", actor="risk1", reason="desk call")
    response = client.get("/health/metrics", HTTP_AUTHORIZATION="Bearer scrape-me-please")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain; version=0.0.4")
    body = response.content.decode()
    samples = dict(re.findall(r"^(\S+) (\S+)$", body, flags=re.MULTILINE))
    assert samples['quanthub_trading_state{account="default",state="HALTED"}'] == "1"
    assert samples['quanthub_trading_state{account="default",state="ACTIVE"}'] == "0"
    assert samples['quanthub_open_alerts{account="default"}'] == "1"
    assert samples['quanthub_engine_up{account="default"}'] == "0"  # no engine in this test
    assert samples['quanthub_net_pnl_rupees{account="default"}'] == "0"
    assert 'quanthub_orders_today{account="default",state="FILLED"}' in samples
    # Every sample line belongs to a declared metric.
    declared = set(re.findall(r"^# TYPE (\S+) ", body, flags=re.MULTILINE))
    assert {name.split("{")[0] for name in samples} <= declared
