"""Small queries the engine runs thousands of times a session, compiled once.

Compiling an ORM query costs more than running it on an indexed table, and
the engine asks the same questions every snapshot or every second ("did the
strategy rows change?", "is any order live?"). ``Prepared`` compiles such a
query once — it must have fixed parameters — and runs its SQL as is. Rows come
back as raw database values, without the fields' converters: use it for ids,
versions and change keys, never for money or anything shown to a person.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.db import connections
from django.db.models import QuerySet


class Prepared:
    def __init__(self, queryset: QuerySet) -> None:
        self.using = queryset.db
        self.sql, self.params = queryset.query.get_compiler(using=self.using).as_sql()

    def rows(self) -> list[tuple]:
        with connections[self.using].cursor() as cursor:
            cursor.execute(self.sql, self.params)
            return cursor.fetchall()

    def exists(self) -> bool:
        """For a query sliced to one row (``[:1]``): whether it found anything."""
        return bool(self.rows())


def on_db_thread(fn):
    """``fn`` as an awaitable run on the one database thread (short ORM work from async code)."""
    return sync_to_async(fn, thread_sensitive=True)
