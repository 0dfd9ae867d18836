from __future__ import annotations

import json
import logging

from quanthub.logging import JsonFormatter


def _format(**extra) -> dict:
    record = logging.LogRecord(
        "trading.orders.manager", logging.WARNING, __file__, 1, "order %s rejected", ("QH1",), None
    )
    for key, value in extra.items():
        setattr(record, key, value)
    return json.loads(JsonFormatter().format(record))


def test_it_writes_one_json_object_per_event_with_extra_fields():
    line = _format(client_order_id="QH1", code="DH-906")
    assert line["level"] == "WARNING"
    assert line["logger"] == "trading.orders.manager"
    assert line["message"] == "order QH1 rejected"
    assert line["client_order_id"] == "QH1" and line["code"] == "DH-906"
    assert line["time"].endswith("+00:00")


def test_it_masks_secret_looking_fields():
    line = _format(access_token="eyJhbGci", totp_secret="JBSWY3DP", webhook_url="https://hooks.example")
    assert line["access_token"] == line["totp_secret"] == line["webhook_url"] == "***"


def test_an_expected_refusal_is_one_json_line_without_a_traceback(client, make_user):
    """A user without a role asks for a page: Django logs the 403, once, as one JSON
    line, with the reason and no traceback (and nothing in plain text), through the
    handlers the settings configure."""
    import io

    from django.urls import reverse

    client.force_login(make_user("nobody"))
    # The configured console handler (pytest adds capturing handlers of its own);
    # Django's plain-text handlers on "django" would show up here too.
    handlers = [h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)]
    assert handlers and not logging.getLogger("django").handlers
    buffer = io.StringIO()
    previous = [h.setStream(buffer) for h in handlers]
    try:
        assert client.get(reverse("dashboard")).status_code == 403
        assert client.get("/api/v1/orders/not-a-number/").status_code in (401, 403, 404)
    finally:
        for handler, stream in zip(handlers, previous, strict=True):
            handler.setStream(stream)
    err = buffer.getvalue()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "the refusal was not logged"
    for line in lines:
        assert line.startswith("{"), err
        record = json.loads(line)  # every line is one JSON object
        assert "exception" not in record and "Traceback" not in line
    forbidden = [json.loads(line) for line in lines if json.loads(line).get("status_code") == 403]
    assert len(forbidden) == 1 and forbidden[0]["logger"] == "django.request"
    assert "no Quant Hub role" in forbidden[0]["reason"]


def test_an_unexpected_error_keeps_its_traceback_folded_into_one_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord("trading.engine", logging.ERROR, __file__, 1, "tick failed", (), sys.exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text
    assert "RuntimeError: boom" in json.loads(text)["exception"]
