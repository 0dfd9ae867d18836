"""The time line an account's records are written on.

The engine writes everything on its own clock: the real one live, a simulated
one in the demo and in replays. Whatever acts for the account outside the
engine — a standalone Kill All, a risk manager's change in the admin, a
reconciliation dry run — writes on ``account_clock(account)``: live the real
clock, and after an engine that ran on simulated time, its last market time
carried on at wall speed, so those records sort with the engine's instead of
days apart.
"""

from __future__ import annotations

import datetime as dt

from quanthub.clock import Clock, RealClock
from trading.models import EngineHeartbeat

SIMULATED_AFTER_S = 60.0  # a market time this far from the wall clock means the engine ran a simulated clock


class _CarriedClock(Clock):
    """The clock of an engine that ran on simulated time, carried on at wall speed
    from its last market time: what a standalone flatten writes then sorts with
    what the engine wrote (one clock per account), not hours or days apart."""

    def __init__(self, market_time: dt.datetime, wall: dt.datetime):
        self._offset = market_time - wall
        self._real = RealClock()

    def now(self) -> dt.datetime:
        return self._real.now() + self._offset

    def monotonic(self) -> float:
        return self._real.monotonic()


def account_clock(account: str) -> Clock:
    """The clock to write with when acting for ``account`` outside the engine.

    Live, that is the real clock. When the account's engine runs (or last ran)
    on a simulated clock (the demo, a replay), its latest market time carried
    on at wall speed, so a trade opened by the engine and closed by a Kill All
    is on one time line.
    """
    beat = (
        EngineHeartbeat.objects.filter(account=account, market_time__isnull=False)
        .order_by("-beat_at")
        .values_list("market_time", "beat_at")
        .first()
    )
    if beat is None:
        return RealClock()
    market_time, beat_at = beat
    if abs((market_time - beat_at).total_seconds()) < SIMULATED_AFTER_S:
        return RealClock()
    return _CarriedClock(market_time, beat_at)


def account_now(account: str) -> dt.datetime:
    """Now on ``account``'s time line (see the module docstring)."""
    return account_clock(account).now()
