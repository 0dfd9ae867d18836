"""The order-rate limiter shared by every order call of an account.

A sliding one-second window: in no interval of one second are more than
``rate`` orders sent (9/s by default, below NSE's 10/s retail-algo threshold
and Dhan's cap; RiskLimits.order_rate_per_s). Exits and Kill All use the
priority lane: while a priority request waits, no normal request is granted.
Modifications count against the window too, and each order may be modified
at most ``max_modifications`` times (RiskLimits; Dhan allows 25).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

WINDOW_S = 1.0
EPSILON_S = 1e-6  # sends exactly one window apart would share a window after float rounding


class ModificationCapExceeded(Exception):
    pass


class SlidingWindow:
    """The pure core: which send times are allowed. Times are monotonic seconds."""

    def __init__(self, rate: int):
        if rate < 1:
            raise ValueError(f"rate must be at least 1, got {rate}")
        self.rate = rate
        self.sent: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self.sent and self.sent[0] + WINDOW_S < now:
            self.sent.popleft()

    def next_free(self, now: float) -> float:
        """The earliest time at or after ``now`` when one more send fits."""
        self._expire(now)
        if len(self.sent) < self.rate:
            return now
        # The send that must leave the window is rate-th from the end.
        return self.sent[len(self.sent) - self.rate] + WINDOW_S + EPSILON_S

    def record(self, at: float) -> None:
        self.sent.append(at)


class RateLimiter:
    def __init__(
        self,
        rate: int | Callable[[], int] = 9,
        *,
        max_modifications: int | Callable[[], int] = 20,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._rate = rate
        self._max_modifications = max_modifications
        self._clock = clock
        self._window = SlidingWindow(self.rate)
        self._normal: deque[asyncio.Future] = deque()
        self._priority: deque[asyncio.Future] = deque()
        self._lock = asyncio.Lock()
        self.granted = 0

    @property
    def rate(self) -> int:
        return self._rate() if callable(self._rate) else self._rate

    @property
    def max_modifications(self) -> int:
        return self._max_modifications() if callable(self._max_modifications) else self._max_modifications

    async def acquire(self, *, priority: bool = False) -> float:
        """Wait for a slot; returns the (monotonic) time it was granted."""
        loop = asyncio.get_running_loop()
        ticket = loop.create_future()
        (self._priority if priority else self._normal).append(ticket)
        try:
            while True:
                async with self._lock:
                    self._window.rate = self.rate  # a risk manager's change applies at once
                    head = self._priority[0] if self._priority else self._normal[0]
                    now = self._clock()
                    due = self._window.next_free(now)
                    if head is ticket and due <= now:
                        (self._priority if priority else self._normal).popleft()
                        self._window.record(now)
                        self.granted += 1
                        self._wake_next()
                        return now
                    wait = max(due - now, 0.0) if head is ticket else None
                try:
                    await asyncio.wait_for(asyncio.shield(ticket), timeout=wait)
                except TimeoutError:
                    pass
                if ticket.done():
                    ticket = loop.create_future()
                    queue = self._priority if priority else self._normal
                    # keep our place at the head: replace the resolved future in place
                    queue[0] = ticket
        except asyncio.CancelledError:
            for queue in (self._priority, self._normal):
                if ticket in queue:
                    queue.remove(ticket)
            self._wake_next()
            raise

    def _wake_next(self) -> None:
        head = self._priority[0] if self._priority else (self._normal[0] if self._normal else None)
        if head is not None and not head.done():
            head.set_result(None)

    def check_modification(self, modifications_so_far: int) -> None:
        if modifications_so_far >= self.max_modifications:
            raise ModificationCapExceeded(
                f"order already modified {modifications_so_far} times (cap {self.max_modifications})"
            )
