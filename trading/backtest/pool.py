"""Entry points of the local process pool (``trading.backtest.fanout.run_pool``).

A pool process is spawned fresh: it copies the main SQLite database into a file
of its own, points Django at the copy and only then sets Django up. So this
module imports nothing of Django at the top (unpickling the initializer must
not load models before ``django.setup()``).
"""

from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path

_STATE: dict[str, str] = {}


def init(main_path: str, scratch: str) -> None:
    import django

    copy = Path(scratch) / f"worker-{os.getpid()}.sqlite3"
    source, target = sqlite3.connect(main_path, timeout=30), sqlite3.connect(copy)
    with target:
        source.backup(target)
    source.close()
    target.close()
    os.environ["DATABASE_URL"] = f"sqlite:///{copy}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    _STATE["main"] = main_path
    django.setup()


def main_cancelled(run_id: int, table: str) -> bool:
    """The run's status from the main database (this process works in its copy)."""
    db = sqlite3.connect(f"file:{_STATE['main']}?mode=ro", uri=True, timeout=20)
    try:
        row = db.execute(f"SELECT status FROM {table} WHERE id = ?", (run_id,)).fetchone()  # noqa: S608 (our table)
    finally:
        db.close()
    return bool(row) and row[0] == "CANCELLED"


def execute(task_id: int, run_id: int, attempt: int) -> dict:
    from trading.backtest import fanout  # after django.setup() in init()
    from trading.models import BacktestRun

    check = functools.partial(main_cancelled, run_id, BacktestRun._meta.db_table)
    return fanout.execute(task_id, attempt=attempt, cancelled=check)
