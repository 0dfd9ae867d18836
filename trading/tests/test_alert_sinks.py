"""Alert delivery to Slack and Telegram, against a real HTTP server on 127.0.0.1
standing in for both (no network). Deliveries run in the background after
commit, so these tests commit for real (transactional tests) and then wait."""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import transaction

from quanthub.logging import JsonFormatter
from trading.alerts import deliver, raise_alert, wait_for_deliveries
from trading.models import Alert
from trading.tasks import deliver_alert

SLACK_PATH = "/services/T0QH/B0QH/s3cr3t-webhook-part"
BOT_TOKEN = "123456789:AAbot-s3cr3t-token"
TELEGRAM_PATH = f"/bot{BOT_TOKEN}/sendMessage"


class FakeApi:
    """Records every POST; answers each path from a script of status codes
    (200 once the script runs out)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.script: dict[str, list[tuple[int, str]]] = {}
        self.gate = threading.Event()
        self.gate.set()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                api.gate.wait(10)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                api.requests.append((self.path, json.loads(body)))
                script = api.script.get(self.path) or []
                status, text = script.pop(0) if script else (200, '{"ok": true}')
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]


@pytest.fixture
def api(settings):
    fake = FakeApi()
    fake.thread.start()
    settings.SLACK_WEBHOOK_URL = fake.base + SLACK_PATH
    settings.TELEGRAM_BOT_TOKEN = BOT_TOKEN
    settings.TELEGRAM_CHAT_ID = "-1004242"
    settings.TELEGRAM_API_BASE = fake.base
    settings.ALERT_SINK_RETRY_DELAYS = (0.01, 0.02, 0.03)
    settings.ALERT_SINK_TIMEOUT_S = 2
    settings.ALERT_SINK_MIN_LEVEL = "WARNING"
    settings.CELERY_TASK_ALWAYS_EAGER = True
    yield fake
    fake.gate.set()
    assert wait_for_deliveries(timeout=30)
    fake.server.shutdown()
    fake.server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def raise_and_commit(level: str = "CRITICAL", title: str = "Daily loss cap hit") -> Alert:
    with transaction.atomic():
        alert = raise_alert(level, "risk", title, "Net P&L -₹50,000.00; trading HALTED")
    assert wait_for_deliveries(timeout=30)
    alert.refresh_from_db()
    return alert


pytestmark = pytest.mark.django_db(transaction=True)


def test_it_delivers_to_slack_and_telegram_with_the_right_json(api):
    alert = raise_and_commit()

    assert sorted(api.paths()) == sorted([SLACK_PATH, TELEGRAM_PATH])
    bodies = dict(api.requests)
    text = bodies[SLACK_PATH]["text"]
    assert bodies[SLACK_PATH] == {"text": text}
    assert bodies[TELEGRAM_PATH] == {"chat_id": "-1004242", "text": text}
    assert text.startswith("[CRITICAL] Daily loss cap hit\nNet P&L -₹50,000.00; trading HALTED\n")
    assert f"alert #{alert.pk}" in text and "IST" in text
    assert alert.deliveries["slack"]["status"] == alert.deliveries["telegram"]["status"] == "sent"
    assert alert.deliveries["slack"]["attempts"] == alert.deliveries["telegram"]["attempts"] == 1


def test_it_retries_after_a_server_error_and_then_sends(api):
    api.script[SLACK_PATH] = [(500, "oops")]

    alert = raise_and_commit()

    assert api.paths().count(SLACK_PATH) == 2
    assert alert.deliveries["slack"]["status"] == "sent"
    assert alert.deliveries["slack"]["attempts"] == 2
    assert alert.deliveries["telegram"] == {**alert.deliveries["telegram"], "status": "sent", "attempts": 1}


def test_it_marks_a_dead_sink_failed_after_every_retry_and_still_delivers_the_other(api, settings):
    settings.SLACK_WEBHOOK_URL = closed_port_url() + SLACK_PATH

    alert = raise_and_commit()

    assert alert.deliveries["slack"]["status"] == "failed"
    assert alert.deliveries["slack"]["attempts"] == 4  # the first try and three retries
    assert alert.deliveries["slack"]["error"] == "ConnectionError"
    assert api.paths() == [TELEGRAM_PATH]
    assert alert.deliveries["telegram"]["status"] == "sent"


def test_it_does_not_retry_a_refusal_that_cannot_succeed(api):
    api.script[TELEGRAM_PATH] = [(400, '{"ok": false, "description": "Bad Request: chat not found"}')]

    alert = raise_and_commit()

    assert api.paths().count(TELEGRAM_PATH) == 1
    assert alert.deliveries["telegram"]["status"] == "failed"
    assert alert.deliveries["telegram"]["attempts"] == 1
    assert "HTTP 400" in alert.deliveries["telegram"]["error"]
    assert "chat not found" in alert.deliveries["telegram"]["error"]
    assert alert.deliveries["slack"]["status"] == "sent"


def test_it_sends_nothing_when_the_transaction_rolls_back(api):
    with pytest.raises(RuntimeError), transaction.atomic():
        raise_alert("CRITICAL", "risk", "Never committed")
        raise RuntimeError("the caller's work failed")

    assert wait_for_deliveries(timeout=30)
    assert api.requests == []
    assert not Alert.objects.filter(title="Never committed").exists()


def test_it_sends_only_alerts_at_or_above_the_minimum_level(api, settings):
    info = raise_and_commit("INFO", "Strategy reloaded")
    settings.ALERT_SINK_MIN_LEVEL = "CRITICAL"
    warning = raise_and_commit("WARNING", "Feed stale for 5 s")
    critical = raise_and_commit("CRITICAL", "Kill All pressed")

    assert info.deliveries == warning.deliveries == {}
    assert set(critical.deliveries) == {"slack", "telegram"}
    assert [body["text"].splitlines()[0] for _, body in api.requests] == ["[CRITICAL] Kill All pressed"] * 2


def test_it_sends_to_no_sink_that_is_not_configured(api, settings):
    settings.TELEGRAM_CHAT_ID = ""

    alert = raise_and_commit()

    assert api.paths() == [SLACK_PATH]
    assert set(alert.deliveries) == {"slack"}


def test_it_returns_to_the_caller_before_any_sink_answers(api):
    api.gate.clear()  # the fake Slack and Telegram hang until the gate opens

    with transaction.atomic():
        alert = raise_alert("CRITICAL", "oms", "Order state UNKNOWN")
    alert.refresh_from_db()

    assert alert.deliveries == {name: {"status": "pending", "attempts": 0} for name in ("slack", "telegram")}
    api.gate.set()
    assert wait_for_deliveries(timeout=30)
    alert.refresh_from_db()
    assert {entry["status"] for entry in alert.deliveries.values()} == {"sent"}


def test_it_never_logs_or_stores_the_webhook_url_or_the_bot_token(api, settings, caplog):
    caplog.set_level(logging.DEBUG)
    # Telegram answers with an error that echoes the token; Slack is down.
    api.script[TELEGRAM_PATH] = [(500, json.dumps({"ok": False, "description": f"bad bot{BOT_TOKEN}"}))] * 4
    settings.SLACK_WEBHOOK_URL = closed_port_url() + SLACK_PATH

    alert = raise_and_commit()

    assert alert.deliveries["slack"]["status"] == alert.deliveries["telegram"]["status"] == "failed"
    assert "***" in alert.deliveries["telegram"]["error"]
    formatted = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert any(record.getMessage() == "alert delivery failed" for record in caplog.records)
    stored = json.dumps(alert.deliveries)
    for secret in (BOT_TOKEN, "s3cr3t-webhook-part", settings.SLACK_WEBHOOK_URL):
        assert secret not in caplog.text
        assert secret not in formatted
        assert secret not in stored


def test_the_celery_task_retries_and_records_the_outcome(api, monkeypatch):
    # Eager Celery re-runs a retried task at once, unless it propagates the Retry.
    monkeypatch.setitem(deliver_alert.app.conf, "task_eager_propagates", False)
    api.script[SLACK_PATH] = [(503, ""), (502, "")]
    with transaction.atomic():
        alert = Alert.objects.create(level="CRITICAL", source="risk", title="Queued delivery")

    result = deliver_alert.apply(args=(alert.pk, "slack"))

    assert result.get() == "sent"
    alert.refresh_from_db()
    assert alert.deliveries["slack"]["status"] == "sent"
    assert alert.deliveries["slack"]["attempts"] == 3
    assert api.paths() == [SLACK_PATH] * 3


def test_deliver_waits_the_injected_delays_between_tries(api):
    api.script[SLACK_PATH] = [(500, "")] * 10
    with transaction.atomic():
        alert = Alert.objects.create(level="WARNING", source="feed", title="Feed stale")
    waited: list[float] = []

    outcome = deliver(alert.pk, "slack", delays=(0.5, 2.0, 5.0), sleep=waited.append)

    assert outcome == "failed"
    assert waited == [0.5, 2.0, 5.0]
    assert api.paths() == [SLACK_PATH] * 4


def test_with_a_queue_each_sink_becomes_its_own_celery_task(api, settings, monkeypatch):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    queued: list[tuple] = []
    monkeypatch.setattr(deliver_alert, "apply_async", lambda args, **options: queued.append(args))

    alert = raise_and_commit()

    assert sorted(queued) == [(alert.pk, "slack"), (alert.pk, "telegram")]
    assert api.requests == []


def test_with_the_queue_down_it_delivers_in_process(api, settings, monkeypatch):
    settings.CELERY_TASK_ALWAYS_EAGER = False

    def broker_down(*args, **options):
        raise ConnectionRefusedError("redis down")

    monkeypatch.setattr(deliver_alert, "apply_async", broker_down)

    alert = raise_and_commit()

    assert sorted(api.paths()) == sorted([SLACK_PATH, TELEGRAM_PATH])
    assert {entry["status"] for entry in alert.deliveries.values()} == {"sent"}


def test_the_json_log_masks_the_token_even_where_a_library_logs_the_url(api, caplog):
    # urllib3 logs every request line at DEBUG, bot token included; settings keep
    # it at WARNING, and the formatter masks the secret if it ever gets through.
    caplog.set_level(logging.DEBUG, logger="urllib3")

    raise_and_commit()

    leaked = [record.getMessage() for record in caplog.records]
    assert any(BOT_TOKEN in message for message in leaked), "urllib3 stopped logging URLs: this test proves nothing"
    assert any(SLACK_PATH in message for message in leaked)
    lines = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert BOT_TOKEN not in lines and "s3cr3t-webhook-part" not in lines
    assert "/bot***/sendMessage" in lines
