"""A small text progress bar for management commands (no dependency).

On a terminal it redraws one line; elsewhere (logs, CI, tests) it prints a line
at each tenth of the way, so captured output stays short and readable.
"""

from __future__ import annotations

from typing import TextIO

WIDTH = 30


class ProgressBar:
    def __init__(self, total: int, *, stream: TextIO, label: str = "") -> None:
        self.total = max(int(total), 0)
        self.done = 0
        self.stream = stream
        self.label = label
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_tenth = -1

    def render(self, note: str = "") -> str:
        share = self.done / self.total if self.total else 1.0
        filled = int(round(share * WIDTH))
        bar = "█" * filled + "·" * (WIDTH - filled)
        text = f"{self.label} [{bar}] {self.done}/{self.total} {share * 100:5.1f}%"
        return f"{text} {note}".rstrip()

    def update(self, done: int | None = None, *, advance: int = 0, note: str = "") -> None:
        self.done = min(self.total, done if done is not None else self.done + advance)
        if self._tty:
            self.stream.write("\r" + self.render(note))
            self.stream.flush()
            return
        tenth = int(self.done * 10 / self.total) if self.total else 10
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(self.render(note) + "\n")

    def finish(self, note: str = "") -> None:
        self.update(self.total, note=note)
        if self._tty:
            self.stream.write("\n")
