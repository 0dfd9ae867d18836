"""Whether this process may have written the books since a read.

The engine asks every simulated second whether any order is live and what today's
net P&L is, at a snapshot's first intent what the gate's basis holds (the trading
state, event days, breakers, the lots open per signal and strategy), and every 30
simulated seconds it reconciles our orders, fills and positions with the broker's
books. Each answer stays the same until one of the tables it reads is written. The writes are counted per table, at the statement, on
every database connection of the process: a wrapper sees every path that writes
them (the ORM, compiled statements, raw SQL), and counts a statement before it runs
(so one that fails or is rolled back only makes a reader read again). A position's
marks, written inside ``marking()``, are counted apart: today's P&L reads them,
reconciliation does not. What another process writes is not counted: a reader asks
again at least once every ``RECHECK_S`` of wall time. Live that is every second (and
every reconciliation), as before; a replay at full speed no longer asks again while
nothing it reads has changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import connections
from django.db.backends.signals import connection_created

RECHECK_S = 1.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")  # REPLACE INTO (SQLite)

# Writing statements per watched table (by its label, "app.Model"), in this process.
_counts: dict[str, int] = {}

# A position's marks (its last price, unrealised P&L, Greeks, stop and target), written
# inside ``marking()``, are counted apart from its other writes: today's P&L reads them,
# reconciliation does not (it compares quantities).
MARKS = "trading.Position:marks"
BOOKS = ("trading.Order", "trading.Position", MARKS, "trading.Trade")
# The books but the marks: what marking leaves as it was (the engine carries today's P&L
# across its own marks, ``Engine._mark_positions``).
UNMARKED_BOOKS = tuple(label for label in BOOKS if label != MARKS)
# What reconciliation compares (``trading.orders.reconcile``): our orders, fills and
# positions, its open breaks, and, for a broker whose books are tables of this
# database (the paper broker), those tables.
RECONCILED = ("trading.Order", "trading.Position", "trading.Trade", "trading.Fill", "trading.ReconciliationBreak")
# The paper broker's order, trade and position books (``PaperBroker.book_tables``).
PAPER_BOOKS = ("trading.PaperOrder", "trading.PaperTrade", "trading.PaperPosition")
# What the gate's basis reads but the limits and today's P&L (``risk.context.BasisReads``):
# the trading state, event days, breaker trips, and the lots of our orders and positions
# (their quantities, with their instruments' lot sizes; marks change none of them).
GATE_BASIS = (
    "trading.Order",
    "trading.Position",
    "risk.TradingState",
    "risk.EventDay",
    "risk.BreakerTrip",
    "marketdata.Instrument",
)
WATCHED = (*RECONCILED, *PAPER_BOOKS, *(label for label in GATE_BASIS if label not in RECONCILED))
_local = threading.local()


@contextmanager
def marking() -> Iterator[None]:
    """The writes of this thread inside are positions' marks only (``MARKS``)."""
    _local.marks = True
    try:
        yield
    finally:
        _local.marks = False


def generation(labels: tuple[str, ...] = BOOKS) -> int:
    """Moves on with every writing statement on these tables in this process (the
    books' tables unless told: orders, positions, trades). Only ``WATCHED`` tables count."""
    return sum(_counts.get(label, 0) for label in labels)


def _quoted(connection) -> tuple[tuple[str, str], ...]:
    from django.apps import apps

    models = [apps.get_model(label) for label in WATCHED]  # the tables as the models name them
    return tuple((connection.ops.quote_name(m._meta.db_table), m._meta.label) for m in models)


class _Counter:
    """An execute wrapper (``connection.execute_wrappers``) counting writes to the watched
    tables, and running what waits for the connection's next statement first
    (``before_next_statement``)."""

    def __init__(self, connection):
        self.tables = _quoted(connection)
        self.waiting: list[Callable[[], None]] = []

    def __call__(self, execute, sql, params, many, context):
        if self.waiting:
            waiting, self.waiting = self.waiting, []  # their own statements come through here too: once
            for write in waiting:
                write()
        if sql.lstrip()[:6].upper() in _WRITES:
            for table, label in self.tables:
                if table in sql:
                    if label == "trading.Position" and getattr(_local, "marks", False):
                        label = MARKS
                    _counts[label] = _counts.get(label, 0) + 1
        return execute(sql, params, many, context)


def watch(connection) -> None:
    """Count the books' writes made through ``connection`` (idempotent). The wrapper
    goes first in the list: ``connection.execute_wrapper()`` blocks pop the last one."""
    if not any(isinstance(w, _Counter) for w in connection.execute_wrappers):
        connection.execute_wrappers.insert(0, _Counter(connection))


def before_next_statement(connection, write: Callable[[], None]) -> None:
    """Run ``write`` just before the next statement anything runs through ``connection``,
    whatever runs it (the ORM, compiled statements, raw SQL), once. What ``write`` writes
    is therefore in the database before any later read through this connection sees it
    (the engine's deferred marks: ``Engine._write_marks``). A ``write`` already waiting
    is not added twice; another's (a second engine in the process) waits beside it."""
    watch(connection)
    waiting = next(w for w in connection.execute_wrappers if isinstance(w, _Counter)).waiting
    if write not in waiting:
        waiting.append(write)


def _created(sender, connection, **kwargs) -> None:
    watch(connection)


def watch_all() -> None:
    """Every connection this thread has, and every one opened from now on, in any thread."""
    connection_created.connect(_created, dispatch_uid="trading-writes")
    for connection in connections.all(initialized_only=True):
        watch(connection)
