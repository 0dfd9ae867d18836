"""One JSON object per line for every log event.

Fields a log shipper can index: time (ISO 8601, UTC), level, logger, message,
plus anything passed through ``extra=``. Secrets never reach a log: callers
pass identifiers, not credentials, ``redact`` masks known secret keys, and the
values of the configured secrets are masked wherever they appear (a library
that logs a request URL would otherwise log a webhook URL or a bot token).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from urllib.parse import urlsplit

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_SECRET_KEYS = ("token", "secret", "password", "totp", "pin", "hmac", "webhook", "authorization")


# Settings holding secrets whose values must never reach a log line. Values
# shorter than _MIN_SECRET are masked only where they stand alone (a PIN
# inside a longer number is not the PIN): masking every occurrence of six
# digits would garble prices and ids, while a PIN in a query string or an
# error message is masked.
_SECRET_SETTINGS = ("SLACK_WEBHOOK_URL", "TELEGRAM_BOT_TOKEN", "DHAN_ACCESS_TOKEN", "DHAN_TOTP_SECRET")
_SHORT_SECRET_SETTINGS = ("DHAN_PIN",)
_MIN_SECRET = 12
_MIN_SHORT_SECRET = 4


# Secrets that are not settings: a renewed Dhan token read from its file.
_registered: set[str] = set()


def register_secret(value: str) -> None:
    """Mask ``value`` in every log line from now on (for secrets obtained at run time)."""
    if value and len(value) >= _MIN_SECRET:
        _registered.add(value)


def secret_values() -> list[str]:
    from django.conf import settings

    if not settings.configured:
        return sorted(_registered, key=len, reverse=True)
    values = list(_registered)
    for name in _SECRET_SETTINGS:
        value = getattr(settings, name, "") or ""
        if len(value) >= _MIN_SECRET:
            values.append(value)
            if name == "SLACK_WEBHOOK_URL":
                values.append(urlsplit(value).path)  # the path alone is the token
    return [value for value in values if len(value) >= _MIN_SECRET]


def _short_secret_patterns() -> list[re.Pattern]:
    from django.conf import settings

    if not settings.configured:
        return []
    patterns = []
    for name in _SHORT_SECRET_SETTINGS:
        value = getattr(settings, name, "") or ""
        if len(value) >= _MIN_SHORT_SECRET:
            patterns.append(re.compile(rf"(?<![0-9A-Za-z]){re.escape(value)}(?![0-9A-Za-z])"))
    return patterns


def mask_secrets(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, "***")
    for pattern in _short_secret_patterns():
        text = pattern.sub("***", text)
    return text


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
        return mask_secrets(json.dumps(payload, default=str, ensure_ascii=False))


# Refusals the product expects (a role without the permission, a missing row): the
# request log keeps one line for each, without the traceback Django attaches.
EXPECTED_STATUS = (401, 403, 404, 405)


class ExpectedRefusals(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) in EXPECTED_STATUS and record.exc_info:
            exc = record.exc_info[1]
            record.exc_info = None
            record.exc_text = None
            if exc is not None and not hasattr(record, "reason"):
                record.reason = str(exc)[:200]
        return True
