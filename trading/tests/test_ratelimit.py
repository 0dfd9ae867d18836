from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trading.brokers.ratelimit import ModificationCapExceeded, RateLimiter, SlidingWindow


def _max_in_any_window(times: list[float]) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


@settings(max_examples=200)
@given(
    rate=st.integers(1, 12),
    arrivals=st.lists(st.floats(0, 20, allow_nan=False), min_size=1, max_size=120),
)
def test_no_one_second_window_ever_holds_more_than_the_rate(rate, arrivals):
    window = SlidingWindow(rate)
    sent = []
    clock = 0.0
    for arrival in sorted(arrivals):
        clock = max(clock, arrival)
        clock = window.next_free(clock)
        window.record(clock)
        sent.append(clock)
    assert _max_in_any_window(sent) <= rate
    assert len(sent) == len(arrivals)  # nothing dropped, only delayed


async def test_it_paces_a_burst_to_the_rate():
    limiter = RateLimiter(rate=9)
    began = time.monotonic()
    sends = await asyncio.gather(*(limiter.acquire() for _ in range(20)))
    assert _max_in_any_window(list(sends)) <= 9
    assert time.monotonic() - began >= 1.0  # the 19th and 20th had to wait out the first second


async def test_exits_use_the_priority_lane():
    limiter = RateLimiter(rate=2)
    await limiter.acquire()
    await limiter.acquire()  # the window is full now
    order: list[str] = []

    async def request(name: str, priority: bool):
        await limiter.acquire(priority=priority)
        order.append(name)

    normal = [asyncio.create_task(request(f"entry{i}", False)) for i in range(3)]
    await asyncio.sleep(0.01)
    exits = [asyncio.create_task(request(f"exit{i}", True)) for i in range(2)]
    await asyncio.gather(*normal, *exits)
    assert order[:2] == ["exit0", "exit1"]


async def test_a_rate_change_applies_to_the_next_request():
    rate = {"value": 1}
    limiter = RateLimiter(rate=lambda: rate["value"])
    await limiter.acquire()
    rate["value"] = 5
    began = time.monotonic()
    await asyncio.gather(*(limiter.acquire() for _ in range(4)))
    assert time.monotonic() - began < 0.5


async def test_a_cancelled_waiter_does_not_block_the_queue():
    limiter = RateLimiter(rate=1)
    await limiter.acquire()
    stuck = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0.01)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    await asyncio.wait_for(limiter.acquire(), timeout=2)


def test_the_modification_cap_is_enforced():
    limiter = RateLimiter(max_modifications=20)
    limiter.check_modification(19)
    with pytest.raises(ModificationCapExceeded, match="cap 20"):
        limiter.check_modification(20)
