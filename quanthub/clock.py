"""One clock for the whole engine.

All times are timezone-aware. Market logic speaks IST. The real clock reads
the system time; the simulated clock is advanced by the feed (replay,
backtests, tests), so the same code runs at any speed.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

IST = ZoneInfo("Asia/Kolkata")
SESSION_OPEN = dt.time(9, 15)
SESSION_CLOSE = dt.time(15, 30)


class Clock:
    def now(self) -> dt.datetime:
        raise NotImplementedError

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (simulated seconds for a simulated clock)."""
        raise NotImplementedError

    def today(self) -> dt.date:
        return self.now().astimezone(IST).date()


class RealClock(Clock):
    def now(self) -> dt.datetime:
        return dt.datetime.now(tz=IST)

    def monotonic(self) -> float:
        import time

        return time.monotonic()


class SimulatedClock(Clock):
    def __init__(self, start: dt.datetime):
        if start.tzinfo is None:
            raise ValueError("SimulatedClock needs an aware datetime")
        self._now = start.astimezone(IST)
        self._origin = self._now

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return (self._now - self._origin).total_seconds()

    def set(self, when: dt.datetime) -> None:
        when = when.astimezone(IST)
        if when < self._now:
            raise ValueError(f"SimulatedClock cannot go back from {self._now} to {when}")
        self._now = when

    def advance(self, seconds: float) -> dt.datetime:
        self._now = self._now + dt.timedelta(seconds=seconds)
        return self._now


def session_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    return (dt.datetime.combine(day, SESSION_OPEN, tzinfo=IST), dt.datetime.combine(day, SESSION_CLOSE, tzinfo=IST))


def is_market_open(when: dt.datetime) -> bool:
    local = when.astimezone(IST)
    if local.weekday() >= 5:
        return False
    return SESSION_OPEN <= local.time() < SESSION_CLOSE
