"""The PagerDuty sink (Events API v2) beside Slack and Telegram, against a real
HTTP server on 127.0.0.1 standing in for PagerDuty (no network)."""

from __future__ import annotations

import pytest

from quanthub.env import env_secret
from trading.alerts import raise_alert, wait_for_deliveries
from trading.models import Alert
from trading.tests.test_alert_sinks import SLACK_PATH, TELEGRAM_PATH, api, closed_port_url  # noqa: F401

ROUTING_KEY = "R0UT1NGk3ys3cr3t0000000000000000"
ENQUEUE = "/v2/enqueue"
ACCEPTED = (202, '{"status": "success", "message": "Event processed", "dedup_key": "k"}')

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pager(api, settings):  # noqa: F811
    settings.PAGERDUTY_ROUTING_KEY = ROUTING_KEY
    settings.PAGERDUTY_EVENTS_URL = api.base + ENQUEUE
    api.script[ENQUEUE] = [ACCEPTED]
    return api


def _raise(level: str = "CRITICAL") -> Alert:
    alert = raise_alert(level, "engine", "Engine lost its lock", "another engine may trade the account")
    assert wait_for_deliveries(timeout=30)
    return Alert.objects.get(pk=alert.pk)


def test_a_critical_alert_pages_with_an_events_v2_trigger(pager):
    alert = _raise()
    bodies = dict(pager.requests)
    event = bodies[ENQUEUE]
    assert event["routing_key"] == ROUTING_KEY and event["event_action"] == "trigger"
    assert event["dedup_key"] == f"quanthub-default-alert-{alert.pk}"
    assert event["payload"]["summary"] == "[CRITICAL] Engine lost its lock"
    assert event["payload"]["severity"] == "critical" and event["payload"]["component"] == "engine"
    assert event["payload"]["source"] == "quanthub/default"
    assert event["payload"]["custom_details"]["message"] == "another engine may trade the account"
    assert event["payload"]["timestamp"].endswith("+00:00")
    assert alert.deliveries["pagerduty"] == {**alert.deliveries["pagerduty"], "status": "sent", "attempts": 1}
    assert {SLACK_PATH, TELEGRAM_PATH} <= set(pager.paths())  # beside the others, not instead


def test_a_warning_goes_to_slack_and_telegram_but_never_pages(pager):
    alert = _raise("WARNING")
    assert ENQUEUE not in pager.paths()
    assert "pagerduty" not in alert.deliveries
    assert alert.deliveries["slack"]["status"] == "sent"


def test_it_retries_when_pagerduty_is_busy_and_keeps_the_dedup_key(pager):
    pager.script[ENQUEUE] = [(429, '{"status": "throttle"}'), (502, "bad gateway"), ACCEPTED]
    alert = _raise()
    sent = [body for path, body in pager.requests if path == ENQUEUE]
    assert len(sent) == 3 and len({body["dedup_key"] for body in sent}) == 1
    assert alert.deliveries["pagerduty"]["status"] == "sent" and alert.deliveries["pagerduty"]["attempts"] == 3


def test_a_refused_event_fails_at_once_and_the_key_is_never_stored_or_logged(pager, caplog):
    pager.script[ENQUEUE] = [(400, f'{{"status": "invalid event", "errors": ["bad key {ROUTING_KEY}"]}}')]
    alert = _raise()
    assert pager.paths().count(ENQUEUE) == 1
    entry = alert.deliveries["pagerduty"]
    assert entry["status"] == "failed" and entry["error"].startswith("HTTP 400")
    assert ROUTING_KEY not in entry["error"] and "***" in entry["error"]
    assert ROUTING_KEY not in caplog.text


def test_an_answer_that_is_not_success_is_a_failure(pager):
    pager.script[ENQUEUE] = [(200, "<html>a proxy's page</html>")] * 4
    alert = _raise()
    assert alert.deliveries["pagerduty"]["status"] == "failed"
    assert alert.deliveries["pagerduty"]["error"] == "PagerDuty did not take the event (HTTP 200)"


def test_pagerduty_down_leaves_the_alert_in_the_app_and_the_others_delivered(pager, settings):
    settings.PAGERDUTY_EVENTS_URL = closed_port_url() + ENQUEUE
    alert = _raise()
    assert alert.deliveries["pagerduty"]["status"] == "failed"
    assert alert.deliveries["pagerduty"]["error"] == "ConnectionError"
    assert alert.deliveries["slack"]["status"] == alert.deliveries["telegram"]["status"] == "sent"
    assert Alert.objects.filter(pk=alert.pk, acknowledged_at__isnull=True).exists()  # the trader still sees it


def test_the_routing_key_comes_from_the_environment_or_a_file(tmp_path):
    path = tmp_path / "pagerduty_routing_key"
    path.write_text(ROUTING_KEY + "\n")
    assert env_secret("PAGERDUTY_ROUTING_KEY", env={"PAGERDUTY_ROUTING_KEY_FILE": str(path)}) == ROUTING_KEY
    assert env_secret("PAGERDUTY_ROUTING_KEY", env={"PAGERDUTY_ROUTING_KEY": ROUTING_KEY}) == ROUTING_KEY
