"""A generated feed's items made ahead, in a process of their own.

The simulator's market is open-loop: nothing the engine does changes it. So at full
speed its items can be generated on another core while the engine works through the
ones before them. ``Prefetch`` starts that process (spawned: the engine's process has
threads and open database connections, which a fork would copy), receives the items a
batch of seconds at a time through a pipe, and hands them back second by second.

The generating process runs the feed's own ``_seconds`` over its own copy of the feed,
so the items are the same objects, value for value and in the same order, as the feed
makes in the engine's process; with each batch it sends the feed's ``get_state()`` as
of the batch's last second and the scenario events it injected in the batch. The pipe
holds about one batch, so the generator is never more than two batches ahead and the
memory it takes stays small.

Through the pipe a chain's float columns travel as one array and its integer columns as
another (a quote snapshot's likewise), and are handed back as rows of those arrays:
unpickling a chain's seventeen arrays one by one cost the engine more than the rest of
taking it in.

If the generating process fails, its traceback is raised here; if it dies without one
(killed), the stream raises rather than ending as if the session were over. When the
engine's process dies, the generator's next send finds the pipe closed and it exits.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import traceback
import types
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from marketdata.feeds.base import ChainSnapshot, QuoteSnapshot

BATCH_SECONDS = 10
# Below this a session is over before a spawned interpreter has imported numpy.
MIN_SESSION_S = 1800
ENV = "QUANTHUB_FEED_PREFETCH"  # "0" (or false/no/off): never generate in another process


class PrefetchError(RuntimeError):
    """The process generating the feed failed or died."""


def wanted(explicit: bool | None, *, speed, session_s: float) -> bool:
    """Whether a feed of ``session_s`` seconds at ``speed`` is generated ahead.

    ``explicit`` (the feed's ``prefetch`` option) decides when given, at full speed only
    (at N× real time the generator has all the time it needs). Otherwise: a full-speed
    session of at least half an hour, on a machine with a core to spare, in a process
    allowed children (a Celery or pool worker is daemonic: its siblings already use the
    other cores), unless the operator switched it off with ``QUANTHUB_FEED_PREFETCH=0``.
    """
    if speed != "max":
        return False
    if explicit is not None:
        return explicit
    if os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    if session_s < MIN_SESSION_S or multiprocessing.current_process().daemon:
        return False
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores >= 2


_CHAIN_FLOATS = ("strike", "last_price", "bid", "ask", "iv", "delta", "gamma", "theta", "vega")
_CHAIN_INTS = ("oi", "prev_oi", "volume", "bid_qty", "ask_qty")
_F8, _I8 = np.dtype(np.float64), np.dtype(np.int64)


def _columns(item, names: tuple[str, ...], dtype: np.dtype, n: int) -> np.ndarray | None:
    """The named columns stacked in one array, or None when one is not a plain 1-d ``dtype`` array."""
    arrays = [getattr(item, name) for name in names]
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != dtype or a.shape != (n,):
            return None
    return np.stack(arrays)


def _pack(item):
    """A chain or quote snapshot as a tuple with its columns stacked; anything else as it is."""
    kind = type(item)
    if kind is ChainSnapshot:
        n = len(item.security_id)
        floats, ints = _columns(item, _CHAIN_FLOATS, _F8, n), _columns(item, _CHAIN_INTS, _I8, n)
        if floats is None or ints is None:
            return item
        head = (item.underlying, item.expiry, item.exchange_time, item.received_at, item.underlying_ltp)
        return ("C", head, item.security_id, item.option_type, item.flags, floats, ints, item.quality, item.seq)
    if kind is QuoteSnapshot:
        n = len(item.security_id)
        prices, sizes = _columns(item, ("bid", "ask"), _F8, n), _columns(item, ("bid_qty", "ask_qty"), _I8, n)
        if prices is None or sizes is None:
            return item
        return ("Q", item.underlying, item.exchange_time, item.received_at, item.security_id, prices, sizes, item.seq)
    return item


def _unpack(item):
    if type(item) is not tuple:
        return item
    if item[0] == "C":
        _, (underlying, expiry, exchange_time, received_at, ltp), sid, option_type, flags, floats, ints, q, seq = item
        strike, last, bid, ask, iv, delta, gamma, theta, vega = floats
        oi, prev_oi, volume, bid_qty, ask_qty = ints
        return ChainSnapshot(
            underlying, expiry, exchange_time, received_at, ltp, sid, strike, option_type, last, oi, prev_oi,
            volume, bid, ask, bid_qty, ask_qty, iv, delta, gamma, theta, vega, flags, q, seq,
        )  # fmt: skip
    _, underlying, exchange_time, received_at, sid, (bid, ask), (bid_qty, ask_qty), seq = item
    return QuoteSnapshot(underlying, exchange_time, received_at, sid, bid, ask, bid_qty, ask_qty, seq)


def _generate(conn, feed, batch_seconds: int) -> None:
    """The generating process: the feed's seconds, a batch per message."""
    try:
        batch: list[tuple[int, list]] = []
        sent = 0
        for second, items in feed._seconds(feed.start, feed.end):
            batch.append((second, [_pack(item) for item in items]))
            if len(batch) >= batch_seconds:
                conn.send(("items", batch, feed.get_state(), feed.injected[sent:]))
                sent, batch = len(feed.injected), []
        conn.send(("end", batch, feed.get_state(), feed.injected[sent:]))
    except (BrokenPipeError, ConnectionResetError, EOFError, KeyboardInterrupt):
        pass  # the engine is gone or stopped the stream
    except BaseException:
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        conn.close()


def _wake(ready: asyncio.Future) -> None:
    if not ready.done():
        ready.set_result(None)


class Prefetch:
    """The generating process of one stream, and the batches it sends."""

    def __init__(self, feed, *, batch_seconds: int = BATCH_SECONDS):
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe(duplex=False)
        self.process = context.Process(
            target=_generate, args=(child, feed, batch_seconds), name="feed-prefetch", daemon=True
        )
        # A spawned process runs the parent's main script again unless it is guarded by
        # ``if __name__ == "__main__"``; the generator needs nothing of it, so it is not
        # told of it (a script that builds an engine at its top level still works).
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            self.process.start()
        finally:
            if main is not None:
                sys.modules["__main__"] = main
        child.close()

    async def batches(self) -> AsyncIterator[tuple[list[tuple[int, list]], Any, list, bool]]:
        """(seconds and their items, the feed's state after them, injected events, last)."""
        loop = asyncio.get_running_loop()
        while True:
            if not self._conn.poll():
                ready = loop.create_future()
                fd = self._conn.fileno()
                loop.add_reader(fd, _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                self.process.join(timeout=5)
                raise PrefetchError(
                    f"the process generating the feed ended without finishing the session "
                    f"(exit code {self.process.exitcode})"
                ) from None
            if message[0] == "error":
                raise PrefetchError(f"the process generating the feed failed:\n{message[1]}")
            kind, packed, state, injected = message
            batch = [(second, [_unpack(item) for item in items]) for second, items in packed]
            yield batch, state, injected, kind == "end"
            if kind == "end":
                return

    def close(self) -> None:
        try:
            self._conn.close()
        except OSError:
            pass
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=5)
