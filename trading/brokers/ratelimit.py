"""The order-rate limiter shared by every order call of an account.

A sliding one-second window: in no interval of one second are more than
``rate`` orders sent (9/s by default, below NSE's 10/s retail-algo threshold
and Dhan's cap; RiskLimits.order_rate_per_s). Exits and Kill All use the
priority lane: while a priority request waits, no normal request is granted.
Modifications count against the window too, and each order may be modified
at most ``max_modifications`` times (RiskLimits; Dhan allows 25).

One account, one window: the engine and a standalone Kill All (another
process) share it. ``SharedRateLimiter`` orders this process's requests in
its own lanes and then claims each send in the account's window in the
database (``DatabaseWindow``, one row per account, taken under its row lock),
so the sum of every sender of the account never passes the rate. A priority
request that must wait marks the lane for a moment; normal sends of every
process hold back while it is marked.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from asgiref.sync import sync_to_async
from django.db import IntegrityError, transaction

from trading.models import OrderRateWindow

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


PRIORITY_HOLD_S = 0.05  # how long a waiting priority send holds normal sends back (renewed while it waits)
# A claimed send reaches the broker a little later (a database round trip, a busy
# event loop); counting each claim for this much longer than a second keeps what
# the broker sees within the rate too.
GUARD_S = 0.1


class DatabaseWindow:
    """The account's sliding window in the database, for every process sending for it.

    ``claim`` is one short transaction: it takes the account's row lock (a write
    first, so SQLite takes its write lock too), drops sends older than a second and
    either records this send or says how long to wait. Times are wall-clock
    seconds (``time.time``): the senders are different processes.
    """

    def __init__(self, account: str, *, clock: Callable[[], float] = time.time):
        self.account = account
        self._clock = clock
        self._ready = False

    def _row(self) -> None:
        if self._ready:
            return
        try:
            OrderRateWindow.objects.get_or_create(account=self.account)
        except IntegrityError:  # another process created it first
            pass
        self._ready = True

    def claim(self, rate: int, priority: bool) -> float:
        """Record one send now and return 0, or return the seconds to wait."""
        self._row()
        with transaction.atomic():
            now = self._clock()
            OrderRateWindow.objects.filter(account=self.account).update(touched=now)
            row = OrderRateWindow.objects.select_for_update().get(account=self.account)
            span = WINDOW_S + GUARD_S
            sends = [t for t in row.sends if t + span >= now]
            if not priority and row.priority_until > now:
                wait = row.priority_until - now
            elif len(sends) < rate:
                sends.append(now)
                wait = 0.0
            else:
                wait = sends[len(sends) - rate] + span + EPSILON_S - now
                if priority:
                    row.priority_until = max(row.priority_until, now + wait + PRIORITY_HOLD_S)
            row.sends = sends
            row.save(update_fields=["sends", "priority_until", "touched"])
        return wait


class SharedRateLimiter(RateLimiter):
    """This process's lanes first, then the account's shared window (``DatabaseWindow``)."""

    def __init__(self, account: str, rate: int | Callable[[], int] = 9, *, window: DatabaseWindow | None = None, **kw):
        super().__init__(rate, **kw)
        self.account = account
        self.window = window or DatabaseWindow(account)
        self._claiming = asyncio.Lock()

    async def acquire(self, *, priority: bool = False) -> float:
        granted = await super().acquire(priority=priority)
        claim = sync_to_async(self.window.claim, thread_sensitive=True)
        # One claimant of this process at a time (in lane order: priority first): the
        # others wait here rather than each polling the database while the window is full.
        async with self._claiming:
            while True:
                wait = await claim(self.rate, priority)
                if wait <= 0:
                    return granted
                await asyncio.sleep(min(wait, 0.25))
