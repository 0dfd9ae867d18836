"""Who an audit record says acted: one convention for every writer.

``user:<username>`` (a person, from the dashboards, the API or the admin),
``engine:<engine id>`` (the engine acting on its own), ``breaker:<name>`` (a
breaker tripping or clearing) and ``cli:<os user>`` (a management command, or
any engine-side work done with no engine running). An engine-side component —
the order manager, the risk gate, reconciliation, the session rollover, a
strategy, a broker stream — records the engine it runs in; its own name stays in
the action (``order.*``, ``gate.refused``, ``reconciliation.*``, ``signal.*``)
or in the reason and payload. The table is in ``docs/risk-and-audit.md``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import getpass
import os
import re
from collections.abc import Iterator

ACTOR_RE = re.compile(r"^(user|engine|breaker|cli):[\w.@+\-]+$")

# The id of the engine whose work is running (its tasks and database threads
# inherit it), or, with no engine, the actor the work is done for.
_acting: contextvars.ContextVar[str | None] = contextvars.ContextVar("quanthub_actor", default=None)


def user(username: str) -> str:
    return f"user:{username}"


def engine(engine_id: str) -> str:
    return f"engine:{engine_id}"


@functools.cache
def cli() -> str:
    """The operating-system user running this process (read once: it does not change)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry or login name
        name = f"uid{os.getuid()}"
    return f"cli:{name}"


def is_valid(actor: str) -> bool:
    return bool(ACTOR_RE.match(actor))


def enter_engine(engine_id: str) -> None:
    """Mark the current context (and the tasks and threads it starts) as this engine's work."""
    _acting.set(engine(engine_id))


@contextlib.contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Engine-side work done for ``actor`` with no engine (a standalone Kill All)."""
    token = _acting.set(actor)
    try:
        yield
    finally:
        _acting.reset(token)


def component() -> str:
    """The actor of an engine-side component: the engine it runs in, whoever it works
    for when no engine runs (a standalone flatten), else the process's user."""
    return _acting.get() or cli()
