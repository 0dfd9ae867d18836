"""Dashboard events: the only module that calls ``group_send``.

The engine and the services publish small *facts* (what changed: the book on a
heartbeat, Kill All's progress, a chain, an alert, a limit) after the
transaction that caused them commits, so the dashboards never show state that
was rolled back. Nothing here renders or reads the database: the web tier
(``trading.consumers``) turns a fact into panels, once per change per account.
A dead channel layer (Redis down) is logged and counted, never raised into the
trading loop. From the engine's loop (``asend_now``) a fact is queued and sent by a
task of that loop, in order, so a tick never waits for Redis.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import secrets
import time
import weakref
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from quanthub import metrics

log = logging.getLogger(__name__)

DASHBOARD_GROUP = "dashboard.{account}"

# The kinds some page shows; ``trading.dashboard.register`` fills it at start-up. A kind
# no panel shows (order, fill, position, signal: the next heartbeat carries them) is
# not sent at all, so it costs no channel-layer round trip.
SHOWN: set[str] = set()

stats = {"published": 0, "failed": 0}

# A fact's version: unique across processes (every web process receives the same
# message and keys its render cache on it), ordered within one publisher.
_ORIGIN = f"{os.getpid():x}{secrets.token_hex(3)}"
_sequence = itertools.count(1)


def group_name(account: str = "default") -> str:
    return DASHBOARD_GROUP.format(account=account)


def fact(kind: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The group message: the kind, its JSON-safe data and a version; ``published_at``
    (wall clock across processes) gives the consumers' push lag."""
    return {
        "type": "dashboard.fact",
        "kind": kind,
        "data": data or {},
        "v": f"{_ORIGIN}-{next(_sequence)}",
        "published_at": time.time(),
    }


def _has_listeners(layer, group: str, kind: str) -> bool:
    """Whether a fact can reach a page. The in-memory layer knows its groups: with
    no page open (tests, benchmarks, a headless engine) nothing is sent. Other
    layers may have listeners in other processes, so they get the fact."""
    if kind not in SHOWN:
        return False
    groups = getattr(layer, "groups", None)
    if isinstance(groups, dict):
        return bool(groups.get(group))
    return True


def _failed(kind: str, exc: Exception) -> bool:
    stats["failed"] += 1
    log.warning("dashboard publish failed", extra={"kind": kind, "error": repr(exc)})
    return False


def send_now(kind: str, data: dict[str, Any] | None = None, *, account: str = "default") -> bool:
    """Publish immediately from sync code (outside a transaction, or in on_commit)."""
    layer = get_channel_layer()
    if layer is None or not _has_listeners(layer, group_name(account), kind):
        return False
    try:
        message = fact(kind, data)
        async_to_sync(layer.group_send)(group_name(account), message)
        metrics.push_sent(time.time() - message["published_at"])
    except Exception as exc:  # Redis down degrades the dashboards, never trading
        return _failed(kind, exc)
    stats["published"] += 1
    return True


# Facts queued on a loop and not yet sent beyond this many: the oldest are dropped
# (counted as failed). Only a channel layer that is down or far behind gets there, and
# the dashboards then show the state the next fact carries.
OUTBOX_LIMIT = 500


class _Outbox:
    """The facts of one event loop, sent in the order they were published by one task
    of that loop: the publisher's await is a queue append, and a slow or dead Redis
    holds the dashboards back, never the caller."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: collections.deque[tuple[Any, str, dict[str, Any]]] = collections.deque()
        self.task: asyncio.Task | None = None
        self.idle = asyncio.Event()
        self.idle.set()

    def put(self, layer, group: str, message: dict[str, Any]) -> None:
        if len(self.queue) >= OUTBOX_LIMIT:
            _, _, lost = self.queue.popleft()
            _failed(lost["kind"], RuntimeError("dashboard outbox full"))
        self.queue.append((layer, group, message))
        self.idle.clear()
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.queue:
                layer, group, message = self.queue.popleft()
                try:
                    await layer.group_send(group, message)
                    metrics.push_sent(time.time() - message["published_at"])
                    stats["published"] += 1
                except Exception as exc:  # Redis down degrades the dashboards, never trading
                    _failed(message["kind"], exc)
        finally:
            self.idle.set()


_outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbox] = weakref.WeakKeyDictionary()


def _outbox() -> _Outbox:
    loop = asyncio.get_running_loop()
    box = _outboxes.get(loop)
    if box is None:
        box = _outboxes[loop] = _Outbox(loop)
    return box


async def asend_now(kind: str, data: dict[str, Any] | None = None, *, account: str = "default") -> bool:
    """Publish from the engine's loop without waiting for the channel layer: the fact
    is queued, and a task of this loop sends it after the facts queued before it. No
    database, no rendering. True when queued (a failure to send is counted and logged
    later), False when no page could show it."""
    layer = get_channel_layer()
    if layer is None or not _has_listeners(layer, group_name(account), kind):
        return False
    _outbox().put(layer, group_name(account), fact(kind, _snapshot(data)))
    return True


def _snapshot(data: dict[str, Any] | None) -> dict[str, Any]:
    """The fact's data as it is now: it is serialised later, and a caller may go on
    changing its own lists (Kill All's errors grow from stage to stage)."""
    return {
        key: list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
        for key, value in (data or {}).items()
    }


async def flush() -> None:
    """Wait until this loop's queued facts have been sent (or have failed)."""
    box = _outboxes.get(asyncio.get_running_loop())
    if box is not None:
        await box.idle.wait()


def publish_on_commit(kind: str, data: dict[str, Any] | None = None, *, account: str = "default") -> None:
    """Publish after the current transaction commits (at once outside one)."""
    if kind not in SHOWN:  # nothing on a page would show it
        return
    payload = dict(data or {})
    transaction.on_commit(lambda: send_now(kind, payload, account=account), robust=True)


def chain_fact(snapshot) -> dict[str, Any]:
    """A chain snapshot as a compact, JSON-safe fact (columns, not rows of dicts): it
    travels through the channel layer straight from the engine's memory, without
    waiting for the writer's flush. Prices keep two decimals, Greeks four
    significant places: what the chain panel shows."""

    def col(values, digits: int) -> list[float]:
        return [round(float(v), digits) for v in values]

    return {
        "underlying": snapshot.underlying,
        "expiry": snapshot.expiry.isoformat(),
        "at": snapshot.received_at.isoformat(),
        "spot": round(float(snapshot.underlying_ltp), 2),
        "security_id": [str(s) for s in snapshot.security_id],
        "strike": col(snapshot.strike, 2),
        "option_type": [int(t) for t in snapshot.option_type],
        "oi": [int(v) for v in snapshot.oi],
        "oi_change": [int(a - b) for a, b in zip(snapshot.oi, snapshot.prev_oi, strict=True)],
        "volume": [int(v) for v in snapshot.volume],
        "bid": col(snapshot.bid, 2),
        "ask": col(snapshot.ask, 2),
        "last": col(snapshot.last_price, 2),
        "iv": col(snapshot.iv, 2),
        "delta": col(snapshot.delta, 4),
        "gamma": col(snapshot.gamma, 6),
        "theta": col(snapshot.theta, 3),
        "vega": col(snapshot.vega, 3),
    }
