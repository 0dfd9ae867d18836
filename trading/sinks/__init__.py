"""Outside sinks for alerts (Slack, Telegram, ...), one module each.

``settings.ALERT_SINKS`` maps a sink's name to the dotted path of its class,
imported only when a sink is used (the healthchecks ``TRANSPORTS`` habit), so
a sink nobody configured costs nothing and a broken one cannot stop start-up.

A sink sends one message and raises ``DeliveryError`` when it could not; the
error's text is safe to store and log: sinks build it from status codes and
exception class names and scrub their secrets from anything else.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from functools import cache
from typing import ClassVar

import requests
from django.conf import settings
from django.utils.module_loading import import_string

from quanthub.clock import IST

# Telegram refuses messages over 4096 characters; Slack's limit is far higher.
MAX_TEXT = 4000


class DeliveryError(Exception):
    """The message did not arrive. ``retry`` says whether trying again may help
    (timeouts, connection errors, 429 and 5xx) or not (a bad token, a bad chat)."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclasses.dataclass(frozen=True)
class AlertMessage:
    id: int
    level: str
    source: str
    title: str
    message: str
    account: str
    created_at: dt.datetime

    @classmethod
    def from_alert(cls, alert) -> AlertMessage:
        return cls(alert.pk, alert.level, alert.source, alert.title, alert.message, alert.account, alert.created_at)

    def text(self) -> str:
        when = self.created_at.astimezone(IST).strftime("%Y-%m-%d %H:%M:%S IST")
        lines = [f"[{self.level}] {self.title}"]
        if self.message:
            lines.append(self.message)
        lines.append(f"{self.source} · account {self.account} · {when} · alert #{self.id}")
        text = "\n".join(lines)
        return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Sink:
    """One outside channel. Subclasses read their configuration from settings."""

    name: ClassVar[str]

    def configured(self) -> bool:
        raise NotImplementedError

    def secrets(self) -> list[str]:
        """Strings that must never appear in an error, a log line or the database."""
        raise NotImplementedError

    def accepts(self, level: str) -> bool:
        """Whether alerts of this level go here (an on-call pager takes CRITICAL only)."""
        return True

    def send(self, message: AlertMessage) -> None:
        raise NotImplementedError

    def post_json(self, url: str, payload: dict) -> requests.Response:
        """POST with the configured timeout; failures become a scrubbed ``DeliveryError``."""
        try:
            response = requests.post(url, json=payload, timeout=settings.ALERT_SINK_TIMEOUT_S)
        except requests.Timeout:
            raise DeliveryError("timeout") from None
        except requests.RequestException as exc:
            # The exception's text holds the URL, and with it the webhook or bot token.
            raise DeliveryError(type(exc).__name__) from None
        if response.status_code >= 400:
            body = scrub(response.text[:200], self.secrets()).strip()
            retry = response.status_code == 429 or response.status_code >= 500
            raise DeliveryError(
                f"HTTP {response.status_code}: {body}" if body else f"HTTP {response.status_code}", retry=retry
            )
        return response


@cache
def _sink_class(path: str) -> type[Sink]:
    return import_string(path)


def get_sink(name: str) -> Sink:
    return _sink_class(settings.ALERT_SINKS[name])()


def configured_sinks() -> list[str]:
    """Names of the sinks with credentials set, in settings order."""
    return [name for name in settings.ALERT_SINKS if get_sink(name).configured()]
