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


def _generate(conn, feed, batch_seconds: int) -> None:
    """The generating process: the feed's seconds, a batch per message."""
    try:
        batch: list[tuple[int, list]] = []
        sent = 0
        for entry in feed._seconds(feed.start, feed.end):
            batch.append(entry)
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
            kind, batch, state, injected = message
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
