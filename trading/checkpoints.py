"""Named points on the order path where the crash-safety harness can kill the
process. Without a hook installed (always, outside that harness) a checkpoint
costs one global lookup."""

from __future__ import annotations

from collections.abc import Callable

_hook: Callable[[str], None] | None = None


def checkpoint(name: str) -> None:
    if _hook is not None:
        _hook(name)


def install(hook: Callable[[str], None] | None) -> None:
    global _hook
    _hook = hook
