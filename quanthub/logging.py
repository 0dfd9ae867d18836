"""One JSON object per line for every log event.

Fields a log shipper can index: time (ISO 8601, UTC), level, logger, message,
plus anything passed through ``extra=``. Secrets never reach a log: callers
pass identifiers, not credentials, and ``redact`` masks known secret keys.
"""

from __future__ import annotations

import datetime as dt
import json
import logging

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_SECRET_KEYS = ("token", "secret", "password", "totp", "pin", "hmac", "webhook", "authorization")


def redact(data: dict) -> dict:
    return {key: ("***" if any(part in key.lower() for part in _SECRET_KEYS) else value) for key, value in data.items()}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = {key: value for key, value in vars(record).items() if key not in _STANDARD}
        payload.update(redact(extra))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str, ensure_ascii=False)
