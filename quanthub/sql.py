"""Small queries the engine runs thousands of times a session, compiled once.

Compiling an ORM query costs more than running it on an indexed table, and
the engine asks the same questions every snapshot or every second ("did the
strategy rows change?", "is any order live?"). ``Prepared`` compiles such a
query once — it must have fixed parameters — and runs its SQL as is. Rows come
back as raw database values, without the fields' converters: use it for ids,
versions and change keys, never for money or anything shown to a person.

``Statement`` is for the reads a path runs with new values every time (the
order a fill belongs to, its position, the charge rate in force): the query is
compiled once, with stand-in values for its parameters, and each run puts the
real values in their places. Rows come back through the fields' converters,
exactly as the ORM returns them — Decimals are Decimals on SQLite too — as
tuples or, for a plain model query, as model instances.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections, transaction
from django.db.models import Model, QuerySet
from django.db.models.expressions import RawSQL
from django.db.models.query import ModelIterable
from django.db.models.sql.subqueries import UpdateQuery


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


# Stand-ins for a Statement's parameters while it is compiled: values no query
# would hold, so each is found exactly once among the compiled parameters. Ints
# stay within every integer field's range (the ORM compiles a comparison with an
# out-of-range value to "matches nothing").
_STAND_INS: dict[type, Callable[[int], Any]] = {
    int: lambda n: 2_147_000_000 + n,
    str: lambda n: f"\x00stand-in {n}\x00",
    dt.date: lambda n: dt.date(1, 1, 1 + n),
}
# How a value of the type goes into a query on a connection (the ORM's own adaptation).
_ADAPT: dict[type, Callable[[Any, Any], Any]] = {
    dt.date: lambda connection, value: connection.ops.adapt_datefield_value(value),
}


def _places(params: Sequence, value: Any) -> list[int]:
    """Where a stand-in is among compiled parameters. A backend may wrap a value
    in a subclass of its type (psycopg's ``Int4`` for an integer column): that
    wrapping is kept when the real value takes its place (``_wrapper``)."""
    return [i for i, param in enumerate(params) if isinstance(param, type(value)) and param == value]


def _wrapper(param: Any) -> Callable[[Any], Any] | None:
    """The backend's wrapper type for a parameter slot, or None for a plain value."""
    return type(param) if isinstance(param, int) and type(param) is not int else None


class Statement:
    """A read compiled once and run with new parameter values (see the module's docstring).

    ``build`` makes the queryset from its parameters; ``types`` are their types,
    in ``build``'s order: ints, strings (ids, keys, codes) and dates, which are
    adapted for the database as the ORM adapts them (not Decimals or datetimes:
    a query compared with money or a moment is not what this is for). It is
    compiled at its first run, on the database connection of that run, inside
    its transaction (``select_for_update`` needs one).
    """

    def __init__(self, build: Callable[..., QuerySet], *types: type) -> None:
        self._build = build
        self._types = types
        self._compiled: tuple | None = None

    def _compile(self) -> tuple:
        stand_ins = [_STAND_INS[kind](n) for n, kind in enumerate(self._types)]
        queryset = self._build(*stand_ins)
        connection = connections[queryset.db]
        compiler = queryset.query.get_compiler(using=queryset.db)
        sql, params = compiler.as_sql()
        slots = []
        for kind, value in zip(self._types, stand_ins, strict=True):
            if kind in _ADAPT:
                value = _ADAPT[kind](connection, value)
            found = _places(params, value)
            if len(found) != 1:
                raise ValueError(f"a Statement parameter appears {len(found)} times in {sql!r}")
            slots.append((found[0], _wrapper(params[found[0]])))
        columns = [column for column, _, _ in compiler.select[: compiler.col_count]]
        converters = [
            (index, functions, expression)
            for index, (functions, expression) in compiler.get_converters(columns).items()
        ]
        model = None
        whole_rows = queryset._iterable_class is ModelIterable and compiler.klass_info is not None
        if whole_rows and not compiler.klass_info.get("related_klass_infos"):
            fields = compiler.klass_info["select_fields"]
            if fields == list(range(len(columns))):
                model = (compiler.klass_info["model"], [columns[i].target.attname for i in fields])
        self._compiled = (queryset.db, sql, list(params), slots, converters, model)
        return self._compiled

    def _execute(self, values: Sequence) -> tuple:
        compiled = self._compiled or self._compile()
        using, sql, params, slots, _, _ = compiled
        connection = connections[using]
        params = params.copy()
        for (slot, wrap), kind, value in zip(slots, self._types, values, strict=True):
            value = _ADAPT[kind](connection, value) if kind in _ADAPT else value
            params[slot] = wrap(value) if wrap is not None and value is not None else value
        return compiled, connection, sql, params

    @property
    def using(self) -> str:
        """The database alias it runs on (once it has run)."""
        return self._compiled[0]

    def _converted(self, rows, converters, connection) -> list[tuple]:
        if not converters:
            return [tuple(row) for row in rows]
        out = []
        for row in rows:
            row = list(row)
            for index, functions, expression in converters:
                value = row[index]
                for convert in functions:
                    value = convert(value, expression, connection)
                row[index] = value
            out.append(tuple(row))
        return out

    def rows(self, *values) -> list[tuple]:
        compiled, connection, sql, params = self._execute(values)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return self._converted(rows, compiled[4], connection)

    def iterate(self, *values, chunk_size: int = 200) -> Iterator[tuple]:
        """The rows a chunk at a time, for a caller that may stop early."""
        compiled, connection, sql, params = self._execute(values)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            while chunk := cursor.fetchmany(chunk_size):
                yield from self._converted(chunk, compiled[4], connection)

    def objects(self, *values) -> list[Model]:
        """The rows as model instances, for a query of one model's whole rows."""
        compiled = self._compiled or self._compile()
        if compiled[5] is None:
            raise TypeError("objects() needs a query of one model's rows, without related rows or annotations")
        model, attnames = compiled[5]
        using = compiled[0]
        return [model.from_db(using, attnames, row) for row in self.rows(*values)]


class Update:
    """An UPDATE compiled once: the rows of ``model`` whose ``where`` fields (name →
    type: int or str) equal the values given get new values for ``fields``.

    What ``model.objects.filter(**where).update(**fields)`` runs, without building
    and compiling the query each time: every value is adapted for the database
    by its field, as the ORM adapts it. Like ``QuerySet.update`` it sets nothing
    else (an ``auto_now`` field only when named and given). Returns the number
    of rows changed.
    """

    def __init__(self, model: type[Model], fields: Sequence[str], where: dict[str, type]) -> None:
        self.model = model
        self.fields = [model._meta.get_field(name) for name in fields]
        self.where = dict(where)
        self._compiled: tuple | None = None

    def _compile(self) -> tuple:
        markers = [_STAND_INS[str](1000 + n) for n in range(len(self.fields))]
        stand_ins = [_STAND_INS[kind](n) for n, kind in enumerate(self.where.values())]
        queryset = self.model._base_manager.filter(**dict(zip(self.where, stand_ins, strict=True)))
        query = queryset.query.chain(UpdateQuery)
        # A bare placeholder per column: the value is adapted by its field at each run.
        query.add_update_values(
            {field.name: RawSQL("%s", (marker,)) for field, marker in zip(self.fields, markers, strict=True)}
        )
        sql, params = query.get_compiler(using=queryset.db).as_sql()
        slots = []
        for value in (*markers, *stand_ins):
            found = _places(params, value)
            if len(found) != 1:
                raise ValueError(f"an Update parameter appears {len(found)} times in {sql!r}")
            slots.append((found[0], _wrapper(params[found[0]])))
        self._compiled = (queryset.db, sql, list(params), slots)
        return self._compiled

    def run(self, values: Sequence, where: Sequence) -> int:
        using, sql, params, slots = self._compiled or self._compile()
        connection = connections[using]
        params = params.copy()
        prepared = [field.get_db_prep_save(value, connection) for field, value in zip(self.fields, values, strict=True)]
        for (slot, wrap), value in zip(slots, (*prepared, *where), strict=True):
            params[slot] = wrap(value) if wrap is not None and value is not None else value
        with transaction.mark_for_rollback_on_error(using=using), connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.rowcount


def on_db_thread(fn):
    """``fn`` as an awaitable run on the one database thread (short ORM work from async code)."""
    return sync_to_async(fn, thread_sensitive=True)
