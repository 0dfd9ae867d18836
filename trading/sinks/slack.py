"""Slack, through an incoming webhook: POST {"text": ...} to the webhook URL.

The whole webhook URL is the secret (its path carries the token).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings

from trading.sinks import AlertMessage, Sink


class SlackSink(Sink):
    name = "slack"

    def configured(self) -> bool:
        return bool(settings.SLACK_WEBHOOK_URL)

    def secrets(self) -> list[str]:
        url = settings.SLACK_WEBHOOK_URL
        return [url, urlsplit(url).path] if url else []

    def send(self, message: AlertMessage) -> None:
        self.post_json(settings.SLACK_WEBHOOK_URL, {"text": message.text()})
