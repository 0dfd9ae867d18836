"""In-app alerts, and delivery to outside sinks.

``raise_alert`` stores the alert in the caller's transaction and publishes it
to the dashboards after commit. Delivery to Slack/Telegram sinks happens
after commit too, each sink isolated so one that is down never stops trading.
"""

from __future__ import annotations

import logging

from trading.events import publish_on_commit
from trading.models import Alert

log = logging.getLogger(__name__)


def raise_alert(level: str, source: str, title: str, message: str = "", *, account: str = "default") -> Alert:
    if level not in Alert.Level.values:
        raise ValueError(f"Unknown alert level {level!r}")
    alert = Alert.objects.create(account=account, level=level, source=source[:40], title=title[:200], message=message)
    log.warning("alert raised", extra={"alert_id": alert.pk, "level": level, "source": source, "title": title})
    publish_on_commit("alert", {"id": alert.pk, "level": level, "title": alert.title}, account=account)
    return alert
