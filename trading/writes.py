"""Whether this process may have written the books (orders, positions, trades) since a read.

The engine asks every simulated second whether any order is live and what today's
net P&L is. Both answers stay the same until one of those tables is written. The
writes are counted at the statement, on every database connection of the process: a
wrapper sees every path that writes them (the ORM, compiled statements, raw SQL),
and counts a statement before it runs (so one that fails or is rolled back only
makes a reader read again). What another process writes is not counted: a reader
asks again at least once every ``RECHECK_S`` of wall time. Live that is every second,
as before; a replay at full speed no longer asks at every simulated second while it
is flat.
"""

from __future__ import annotations

from django.db import connections
from django.db.backends.signals import connection_created

RECHECK_S = 1.0
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")  # REPLACE INTO (SQLite)

_generation = 0


def generation() -> int:
    """Moves on with every writing statement on the books' tables in this process."""
    return _generation


def _quoted(connection) -> tuple[str, ...]:
    from trading.models import Order, Position, Trade  # the books' tables, as the models name them

    return tuple(connection.ops.quote_name(model._meta.db_table) for model in (Order, Position, Trade))


class _Counter:
    """An execute wrapper (``connection.execute_wrappers``) counting the books' writes."""

    def __init__(self, connection):
        self.tables = _quoted(connection)

    def __call__(self, execute, sql, params, many, context):
        if sql.lstrip()[:6].upper() in _WRITES and any(table in sql for table in self.tables):
            global _generation
            _generation += 1
        return execute(sql, params, many, context)


def watch(connection) -> None:
    """Count the books' writes made through ``connection`` (idempotent). The wrapper
    goes first in the list: ``connection.execute_wrapper()`` blocks pop the last one."""
    if not any(isinstance(w, _Counter) for w in connection.execute_wrappers):
        connection.execute_wrappers.insert(0, _Counter(connection))


def _created(sender, connection, **kwargs) -> None:
    watch(connection)


def watch_all() -> None:
    """Every connection this thread has, and every one opened from now on, in any thread."""
    connection_created.connect(_created, dispatch_uid="trading-writes")
    for connection in connections.all(initialized_only=True):
        watch(connection)
