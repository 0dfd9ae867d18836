"""PagerDuty, through the Events API v2: POST a trigger event to
``PAGERDUTY_EVENTS_URL`` (https://events.pagerduty.com/v2/enqueue).

Only CRITICAL alerts page: on-call is woken for what needs a person now
(Slack and Telegram carry the rest). The routing key (the integration key of
an "Events API v2" service) is the secret: ``PAGERDUTY_ROUTING_KEY`` or its
``_FILE``. Each alert's id is its ``dedup_key``, so a retried delivery updates
the same incident instead of opening another. PagerDuty answers 202 when it
took the event; 400 means the event or the key is wrong (retrying cannot
help), 429 and 5xx are worth another try.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings

from trading.sinks import AlertMessage, DeliveryError, Sink

SUMMARY_MAX = 1024  # PagerDuty truncates a longer summary


class PagerDutySink(Sink):
    name = "pagerduty"

    def configured(self) -> bool:
        return bool(settings.PAGERDUTY_ROUTING_KEY)

    def accepts(self, level: str) -> bool:
        return level == "CRITICAL"

    def secrets(self) -> list[str]:
        key = settings.PAGERDUTY_ROUTING_KEY
        return [key] if key else []

    def event(self, message: AlertMessage) -> dict:
        summary = f"[{message.level}] {message.title}"
        return {
            "routing_key": settings.PAGERDUTY_ROUTING_KEY,
            "event_action": "trigger",
            "dedup_key": f"quanthub-{message.account}-alert-{message.id}",
            "payload": {
                "summary": summary[:SUMMARY_MAX],
                "source": f"quanthub/{message.account}",
                "severity": "critical",
                "timestamp": message.created_at.astimezone(dt.UTC).isoformat(),
                "component": message.source,
                "custom_details": {"message": message.message, "alert_id": message.id, "text": message.text()},
            },
        }

    def send(self, message: AlertMessage) -> None:
        response = self.post_json(settings.PAGERDUTY_EVENTS_URL, self.event(message))
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code != 202 or not isinstance(answer, dict) or answer.get("status") != "success":
            raise DeliveryError(f"PagerDuty did not take the event (HTTP {response.status_code})")
