"""The outside world failing, as the engine sees it: one record per cause.

A broker call that fails (Unavailable, Throttled, AuthExpired, Unknown, a 5xx,
a malformed reply, a timeout) or a database that is gone starts an outage of
its cause. While any outage is open the engine takes no new exposure
(REDUCING: in memory at once, and in the account's trading state when the
database can be written), retries the failed work after a bounded back-off,
and keeps sending exits. Each cause logs one line and raises one alert when it
starts (not one a second), and one when it ends; no traceback for what is an
expected outage. When the last outage ends, a REDUCING that the engine itself
set returns to ACTIVE; one a risk manager or a breaker set stays.

A database outage cannot be written down while it lasts: its alert is written
when the database is back, saying how long it was gone.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from asgiref.sync import sync_to_async
from django.db import Error as DatabaseErrors
from django.db import connections

from audit import actors
from risk.models import TradingState
from risk.services import get_trading_state, set_trading_state
from trading.alerts import raise_alert
from trading.brokers.base import BrokerError

log = logging.getLogger(__name__)

BROKER, DATABASE = "broker", "database"
# What the outside world raises at us. Anything else is a bug and is not hidden.
OUTSIDE_ERRORS = (BrokerError, TimeoutError, ConnectionError, OSError)


def is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseErrors)


def is_outside_error(exc: BaseException) -> bool:
    return isinstance(exc, OUTSIDE_ERRORS) or is_database_error(exc)


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def close_connections() -> None:
    """Drop this thread's database connections (broken ones raise on close)."""
    for conn in connections.all(initialized_only=True):
        try:
            conn.close()
        except Exception:  # noqa: S110  (a dead connection cannot be closed cleanly; it is dropped all the same)
            pass


@dataclass
class Outage:
    cause: str
    since: float  # time.monotonic()
    first_error: str
    delay: float
    next_try: float
    failures: int = 1
    kinds: set[str] = field(default_factory=set)  # error kinds already alerted for this outage
    pending_alerts: list[tuple[str, str, str]] = field(default_factory=list)


class Outages:
    def __init__(
        self,
        account: str,
        *,
        min_delay_s: float = 0.5,
        max_delay_s: float = 10.0,
        quiet_s: float = 60.0,
        settle_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] | None = None,
    ):
        self.account = account
        # The engine's clock: alerts and trading-state changes are stamped with it (None:
        # the account's time line, as for anyone else acting on the account).
        self.now = now
        self.min_delay_s = min_delay_s
        self.max_delay_s = max_delay_s
        self.monotonic = monotonic
        self.open: dict[str, Outage] = {}
        # A flapping cause is one outage: alerts at most once per quiet_s for each
        # (cause, kind), and ACTIVE again only after settle_s without a failure.
        self.quiet_s = quiet_s
        self.settle_s = settle_s
        self._alerted: dict[tuple[str, str], float] = {}
        self._back_alerted: dict[str, float] = {}
        self._resume_at: float | None = None
        self.reduced = False  # the account's trading state was set REDUCING by us
        self.alerts_raised = 0
        # Alerts not written yet (database down), each with the engine's time it was raised at.
        self._deferred: list[tuple[str, str, str, dt.datetime | None]] = []

    @property
    def active(self) -> bool:
        return bool(self.open)

    def due(self, cause: str) -> bool:
        """Whether work of this cause may be tried now (no outage, or its back-off has passed)."""
        outage = self.open.get(cause)
        return outage is None or self.monotonic() >= outage.next_try

    def delay(self, cause: str) -> float:
        outage = self.open.get(cause)
        return 0.0 if outage is None else max(outage.next_try - self.monotonic(), 0.0)

    def summary(self) -> dict[str, dict]:
        now = self.monotonic()
        return {
            c: {"since_s": round(now - o.since, 1), "error": o.first_error, "failures": o.failures}
            for c, o in self.open.items()
        }

    async def failed(self, cause: str, exc: BaseException) -> None:
        now = self.monotonic()
        kind = type(exc).__name__
        outage = self.open.get(cause)
        if outage is None:
            outage = Outage(cause, now, describe(exc), self.min_delay_s, now + self.min_delay_s)
            self.open[cause] = outage
        else:
            outage.failures += 1
            outage.delay = min(outage.delay * 2, self.max_delay_s)
            outage.next_try = now + outage.delay
        self._resume_at = None
        last = self._alerted.get((cause, kind))
        if kind not in outage.kinds and (last is None or now - last >= self.quiet_s):
            self._alerted[(cause, kind)] = now
            log.error(
                "outside world failing: entries stopped, retrying with back-off",
                extra={"cause": cause, "error": describe(exc), "account": self.account},
            )
            level = "CRITICAL" if cause == DATABASE or kind == "AuthExpired" else "WARNING"
            title = {
                DATABASE: "Database unreachable: engine REDUCING",
                BROKER: f"Broker failing ({kind}): engine REDUCING",
            }.get(cause, f"{cause} failing: engine REDUCING")
            self._deferred.append((level, title, f"{describe(exc)}. Entries stop; exits go on; retrying.", self._at()))
        outage.kinds.add(kind)
        if cause != DATABASE:
            await self._write(reducing=True)

    async def succeeded(self, cause: str) -> None:
        outage = self.open.pop(cause, None)
        if outage is None:
            if self._deferred and DATABASE not in self.open:
                await self._write()
            return
        now = self.monotonic()
        lasted = now - outage.since
        last = self._back_alerted.get(cause)
        if last is None or now - last >= self.quiet_s:
            self._back_alerted[cause] = now
            log.warning(
                "outside world back",
                extra={"cause": cause, "lasted_s": round(lasted, 1), "failures": outage.failures},
            )
            self._deferred.append(
                (
                    "INFO",
                    f"{cause.capitalize()} back after {lasted:.0f} s",
                    f"First error: {outage.first_error}.",
                    self._at(),
                )
            )
        if not self.open:
            self._resume_at = now + self.settle_s
        await self._write()

    async def settle(self) -> None:
        """Called every second: ACTIVE again once nothing has failed for ``settle_s``."""
        if self._resume_at is not None and not self.open and self.monotonic() >= self._resume_at:
            self._resume_at = None
            await self._write(resume=True)

    async def _write(self, *, reducing: bool = False, resume: bool = False) -> None:
        """Alerts and the trading state, when the database can take them."""
        if DATABASE in self.open:
            return
        try:
            await sync_to_async(self._write_sync, thread_sensitive=True)(reducing, resume)
        except DatabaseErrors as exc:
            log.warning("outage bookkeeping deferred: database error", extra={"error": describe(exc)})

    def _at(self) -> dt.datetime | None:
        return self.now() if self.now is not None else None

    def _write_sync(self, reducing: bool, resume: bool) -> None:
        while self._deferred:
            level, title, message, at = self._deferred[0]
            raise_alert(level, "engine", title, message, account=self.account, at=at)
            self._deferred.pop(0)
            self.alerts_raised += 1
        if reducing and not self.reduced:
            causes = ", ".join(sorted(self.open)) or "outside world"
            self.reduced = set_trading_state(
                TradingState.State.REDUCING,
                actor=actors.component(),
                reason=f"outage ({causes}): entries stop until it passes",
                account=self.account,
                expected=TradingState.State.ACTIVE,
                at=self._at(),
            )
        if resume and self.reduced:
            state = get_trading_state(self.account)
            if state.state == TradingState.State.REDUCING and state.reason.startswith("outage ("):
                set_trading_state(
                    TradingState.State.ACTIVE,
                    actor=actors.component(),
                    reason="outage over: the broker and the database answer again",
                    account=self.account,
                    expected=TradingState.State.REDUCING,
                    at=self._at(),
                )
            self.reduced = False
