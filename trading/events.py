"""Dashboard events: the only module that calls ``group_send``.

Events go out only after the transaction that caused them commits, so the
dashboards never show state that was rolled back. A dead channel layer (Redis
down) is logged and counted, never raised into the trading loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.db import DatabaseError, transaction

from quanthub import metrics

log = logging.getLogger(__name__)

DASHBOARD_GROUP = "dashboard.{account}"

# kind -> function(data) -> list of (element id, html) to swap out of band.
# The dashboard module registers its partial renderers here at start-up.
RENDERERS: dict[str, Callable[[dict[str, Any]], list[tuple[str, str]]]] = {}

stats = {"published": 0, "failed": 0}


def group_name(account: str = "default") -> str:
    return DASHBOARD_GROUP.format(account=account)


def _message(kind: str, data: dict[str, Any], account: str = "default") -> dict[str, Any]:
    """The group message; ``html`` holds the re-rendered panels (rendered once here,
    not once per connected page). Renderers read the database: call from sync code."""
    message: dict[str, Any] = {"type": "dashboard.event", "kind": kind, "data": data}
    message["published_at"] = time.time()  # wall clock across processes: the consumers' push lag
    renderer = RENDERERS.get(kind)
    if renderer is not None:
        try:
            message["html"] = "".join(html for _, html in renderer({**data, "account": account}))
        except DatabaseError as exc:  # the database is away: the engine reports that outage itself
            log.warning("event not rendered: database error", extra={"kind": kind, "error": type(exc).__name__})
        except Exception:  # a broken partial must not stop trading
            log.exception("event renderer failed", extra={"kind": kind})
    return message


def _has_listeners(layer, group: str, kind: str) -> bool:
    """Whether an event can reach a page. A page only ever swaps in rendered panels,
    so a kind with no renderer (order, fill, position, signal: the next heartbeat
    carries them) is not sent at all. The in-memory layer knows its groups: with
    no page open (tests, benchmarks, a headless engine) there is nothing to render.
    Other layers may have listeners in other processes, so they get the event."""
    if kind not in RENDERERS:
        return False
    groups = getattr(layer, "groups", None)
    if isinstance(groups, dict):
        return bool(groups.get(group))
    return True


def send_now(kind: str, data: dict[str, Any] | None = None, *, account: str = "default") -> bool:
    """Send immediately (use only outside a transaction, e.g. heartbeats)."""
    layer = get_channel_layer()
    if layer is None or not _has_listeners(layer, group_name(account), kind):
        return False
    try:
        message = _message(kind, data or {}, account)
        async_to_sync(layer.group_send)(group_name(account), message)
        metrics.push_sent(time.time() - message["published_at"])
    except Exception as exc:  # Redis down degrades the dashboards, never trading
        stats["failed"] += 1
        log.warning("dashboard publish failed", extra={"kind": kind, "error": repr(exc)})
        return False
    stats["published"] += 1
    return True


async def asend_now(kind: str, data: dict[str, Any] | None = None, *, account: str = "default") -> bool:
    layer = get_channel_layer()
    if layer is None or not _has_listeners(layer, group_name(account), kind):
        return False
    try:
        message = await sync_to_async(_message, thread_sensitive=True)(kind, data or {}, account)
        await layer.group_send(group_name(account), message)
        metrics.push_sent(time.time() - message["published_at"])
    except Exception as exc:
        stats["failed"] += 1
        log.warning("dashboard publish failed", extra={"kind": kind, "error": repr(exc)})
        return False
    stats["published"] += 1
    return True


def publish_on_commit(kind: str, data: dict[str, Any] | None = None, *, account: str = "default") -> None:
    """Publish after the current transaction commits (at once outside one)."""
    if kind not in RENDERERS:  # nothing on a page would show it
        return
    payload = dict(data or {})
    transaction.on_commit(lambda: send_now(kind, payload, account=account), robust=True)
