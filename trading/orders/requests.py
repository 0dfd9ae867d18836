"""One sender per account: flatten requests handed to whoever sends for it.

A Kill All or an Exit pressed anywhere — the dashboard, the REST API, the
admin, ``manage.py kill_all``, the daily-loss breaker — becomes a
``FlattenRequest`` row. The engine holding the account's lock looks for
pending rows every second and works them with its own order manager, rate
limiter, live book and clock (``take_pending``), so its strategies hear the
fills. When no engine takes a request within ``HANDOVER_S`` (none runs, or
it is stuck), the requester claims the row itself and works it standalone
(``trading.orders.root.standalone_path``): it takes the account's engine lock
for the duration when it is free, so an engine starting meanwhile stands by,
and it is paced by the account's shared rate window either way. A stuck
engine that wakes up finds the account HALTED, the request taken, and the
claims (``trading.orders.claims``) keep it from exiting the same units again.

Claims on the row are conditional updates (PENDING → TAKEN): exactly one
worker gets it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from audit import actors
from quanthub.clock import Clock
from trading.engine.lock import engine_lock
from trading.models import EngineHeartbeat, FlattenRequest, Position
from trading.orders import flatten

log = logging.getLogger(__name__)
R = FlattenRequest.State
HANDOVER_S = 2.0  # an engine that has not taken a request by then is not waited for
POLL_S = 0.05


class ExitRefused(Exception):
    """The exit was not requested; the message says why."""


def active_engine(account: str = "default", *, now: dt.datetime | None = None) -> EngineHeartbeat | None:
    """The engine trading ``account``, if its heartbeat is fresh (wall clock)."""
    now = now or timezone.now()
    horizon = now - dt.timedelta(seconds=settings.HEALTH_ENGINE_STALE_S)
    return (
        EngineHeartbeat.objects.filter(account=account, role=EngineHeartbeat.Role.ACTIVE, beat_at__gte=horizon)
        .order_by("-beat_at")
        .first()
    )


def refuse_unless_exitable(position: Position) -> None:
    if not position.is_open:
        raise ExitRefused("the position is already flat")
    busy = FlattenRequest.objects.filter(
        account=position.account, kind=FlattenRequest.Kind.EXIT, position=position, state__in=[R.PENDING, R.TAKEN]
    ).exists()
    if busy:
        raise ExitRefused("an exit is already being worked")


def _standalone_id() -> str:
    return f"standalone:{socket.gethostname()}-{os.getpid()}"[:100]


def _running(account: str, kind: str, position_id: int | None) -> FlattenRequest | None:
    """An unfinished request of the same kind (a second press joins it), unless it is
    older than its deadline plus a margin (its worker died)."""
    for row in FlattenRequest.objects.filter(
        account=account, kind=kind, position_id=position_id, state__in=[R.PENDING, R.TAKEN]
    ).order_by("-requested_at"):
        if (timezone.now() - row.requested_at).total_seconds() <= row.deadline_s + 30:
            return row
    return None


def submit(
    kind: str, *, account: str, actor: str, reason: str = "", position_id: int | None = None, deadline_s: float = 15.0
) -> tuple[FlattenRequest, bool]:
    """Record a request (or find the one already running). Returns (row, joined)."""
    running = _running(account, kind, position_id)
    if running is not None:
        return running, True
    row = FlattenRequest.objects.create(
        account=account,
        kind=kind,
        position_id=position_id,
        actor=actor[:150],
        reason=reason[:500],
        deadline_s=deadline_s,
        requested_at=timezone.now(),
    )
    log.warning("flatten requested", extra={"request": row.pk, "kind": kind, "actor": actor})
    return row, False


def _take(row_id: int, taker: str, at: dt.datetime) -> bool:
    return bool(
        FlattenRequest.objects.filter(pk=row_id, state=R.PENDING).update(state=R.TAKEN, taken_by=taker, taken_at=at)
    )


def _finish(row_id: int, result: dict, at: dt.datetime) -> None:
    FlattenRequest.objects.filter(pk=row_id, state=R.TAKEN).update(state=R.DONE, finished_at=at, result=result)


async def work(path, row: FlattenRequest) -> dict:
    """Work one taken request on ``path`` (the engine's or a standalone one); returns the result."""
    try:
        if row.kind == FlattenRequest.Kind.KILL_ALL:
            result = await flatten.kill_all(path, actor=row.actor, reason=row.reason, deadline_s=row.deadline_s)
        else:
            result = await flatten.exit_position(path, row.position_id, actor=row.actor, deadline_s=row.deadline_s)
        data = result.as_dict()
    except Exception as exc:  # the requester must hear what happened, whatever happened
        log.exception("flatten failed", extra={"request": row.pk})
        data = {"kind": row.kind, "flat": False, "errors": [f"failed: {exc!r}"[:300]]}
        try:
            await flatten._db(flatten.raise_alert)(
                "CRITICAL", "kill_all", f"{row.get_kind_display()} failed", repr(exc)[:500], account=row.account
            )
        except Exception:
            log.exception("alert could not be raised")
    await flatten._db(_finish)(row.pk, data, path.clock.now())
    return data


# --- the engine's side --------------------------------------------------------------------------


def take_pending(account: str, engine_id: str, clock: Clock) -> list[FlattenRequest]:
    """The pending requests of the account, now taken by this engine (sync)."""
    taken = []
    for row in FlattenRequest.objects.filter(account=account, state=R.PENDING).order_by("requested_at"):
        if _take(row.pk, engine_id, clock.now()):
            row.state, row.taken_by = R.TAKEN, engine_id
            taken.append(row)
    return taken


# --- the requester's side -----------------------------------------------------------------------


def _wait(row_id: int, until: float, state_not: tuple) -> FlattenRequest:
    while True:
        row = FlattenRequest.objects.get(pk=row_id)
        if row.state not in state_not or time.monotonic() >= until:
            return row
        time.sleep(POLL_S)


def run_standalone(row: FlattenRequest) -> dict:
    """Work a request this process has taken: the account's lock when it is free
    (an engine starting meanwhile stands by), the shared rate window, a broker of
    our own, exits priced from the last stored quotes."""
    from trading.orders.root import standalone_path

    lock = engine_lock(row.account)
    held = lock.acquire()
    if not held:
        log.warning("account lock held by an engine that did not take the request", extra={"request": row.pk})
    try:
        path = standalone_path(row.account)

        async def go() -> dict:
            try:
                return await work(path, row)
            finally:
                await path.close()

        with actors.acting_as(row.actor):  # no engine: the order path records the requester
            return asyncio.run(go())
    finally:
        if held:
            lock.release()


def request(
    kind: str,
    *,
    account: str,
    actor: str,
    reason: str = "",
    position_id: int | None = None,
    deadline_s: float = 15.0,
    handover_s: float = HANDOVER_S,
) -> dict:
    """Ask for a flatten and wait for its result (blocking: call it off the event loop).

    The engine holding the account's lock takes it within a second; with no
    engine, or one that has not taken it within ``handover_s``, it is worked here.
    The result says who worked it (``worked_by``) and whether this request joined
    one already running (``joined``).
    """
    row, joined = submit(
        kind, account=account, actor=actor, reason=reason, position_id=position_id, deadline_s=deadline_s
    )
    if row.state == R.PENDING and active_engine(account) is not None:
        row = _wait(row.pk, time.monotonic() + handover_s, (R.PENDING,))
    if row.state == R.PENDING:
        from trading.orders.root import account_clock

        if _take(row.pk, _standalone_id(), account_clock(account).now()):
            row.refresh_from_db()
            data = run_standalone(row)
            close_old_connections()
            return {**data, "worked_by": row.taken_by, "joined": joined, "request": row.pk}
        row.refresh_from_db()
    # Taken by the engine (or by another requester): wait for its result.
    row = _wait(row.pk, time.monotonic() + row.deadline_s + 10, (R.PENDING, R.TAKEN))
    if row.state != R.DONE:
        return {
            "kind": kind,
            "flat": False,
            "errors": [f"{row.taken_by or 'nobody'} has not finished the request in time"],
            "worked_by": row.taken_by,
            "joined": joined,
            "request": row.pk,
        }
    return {**row.result, "worked_by": row.taken_by, "joined": joined, "request": row.pk}


def request_kill_all(actor: str, reason: str, account: str = "default", *, deadline_s: float = 15.0) -> dict:
    """Kill All from anywhere (the dashboard, the admin, the API, ``manage.py kill_all``)."""
    return request(FlattenRequest.Kind.KILL_ALL, account=account, actor=actor, reason=reason, deadline_s=deadline_s)


def request_exit(position_id: int, actor: str, account: str = "default", *, deadline_s: float = 10.0) -> dict:
    """One position's Exit (with its signal's hedge) from the dashboard or the API."""
    position = Position.objects.get(pk=position_id, account=account)
    refuse_unless_exitable(position)
    return request(
        FlattenRequest.Kind.EXIT,
        account=account,
        actor=actor,
        reason=f"exit of position {position_id}",
        position_id=position_id,
        deadline_s=deadline_s,
    )
