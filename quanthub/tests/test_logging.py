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
