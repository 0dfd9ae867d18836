"""Replay a stored trading day through the same feed interface as live data."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async

from marketdata.feeds.base import Feed, FeedItem
from quanthub.clock import Clock, SimulatedClock


class ReplayFeed(Feed):
    name = "replay"

    def __init__(self, *, date: dt.date, clock: Clock | None = None, speed: float | str = "max", chunk: int = 2000):
        if speed != "max" and (not isinstance(speed, int | float) or speed <= 0):
            raise ValueError(f"speed must be 'max' or a positive number, got {speed!r}")
        self.date = date
        self.clock = clock
        self.speed = speed
        self.chunk = chunk
        self._closed = False

    @classmethod
    def from_options(cls, *, date=None, clock=None, speed="max", **ignored) -> ReplayFeed:
        if date is None:
            raise ValueError("The replay feed needs a date (--date YYYY-MM-DD)")
        return cls(date=date, clock=clock, speed=speed)

    async def close(self) -> None:
        self._closed = True

    def items(self):
        from marketdata.storage import load_session

        return load_session(self.date)

    async def stream(self) -> AsyncIterator[FeedItem]:
        source = self.items()

        def next_chunk():
            return [item for _, item in zip(range(self.chunk), source, strict=False)]

        first_time = None
        wall_start = time.monotonic()
        while not self._closed:
            batch = await sync_to_async(next_chunk, thread_sensitive=True)()
            if not batch:
                return
            for item in batch:
                if self._closed:
                    return
                if first_time is None:
                    first_time = item.received_at
                if self.speed != "max":
                    due = wall_start + (item.received_at - first_time).total_seconds() / float(self.speed)
                    delay = due - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if isinstance(self.clock, SimulatedClock) and item.received_at > self.clock.now():
                    self.clock.set(item.received_at)
                yield item
