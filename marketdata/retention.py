"""Retention of stored market data, one service for every caller.

Raw snapshots and ticks are kept 7 days, minute bars 90 days, derived
metrics 2 years. On PostgreSQL the raw tables are partitioned by day, so
expired days are dropped whole (instant, no bloat); elsewhere rows are
deleted in batches so no single transaction holds the database for long.
"""

from __future__ import annotations

import datetime as dt
import logging
import re

from django.db import connection, transaction

from marketdata.models import ChainQuote, DerivedMetric, LtpQuote, MinuteBar
from marketdata.storage import RAW_TABLES
from quanthub.clock import IST

log = logging.getLogger(__name__)

RAW_DAYS = 7
BAR_DAYS = 90
METRIC_DAYS = 730
BATCH = 10_000


def cutoffs(now: dt.datetime) -> dict[str, dt.datetime]:
    """Start of the oldest IST day still kept, per tier."""
    today = dt.datetime.combine(now.astimezone(IST).date(), dt.time(0), tzinfo=IST)
    return {
        "raw": today - dt.timedelta(days=RAW_DAYS - 1),
        "bars": today - dt.timedelta(days=BAR_DAYS - 1),
        "metrics": today - dt.timedelta(days=METRIC_DAYS - 1),
    }


def prune(now: dt.datetime, *, dry_run: bool = False) -> dict[str, int]:
    limits = cutoffs(now)
    counts: dict[str, int] = {}
    if connection.vendor == "postgresql":
        for name, table in RAW_TABLES.items():
            counts[f"{name}_partitions_dropped"] = _drop_partitions(table, limits["raw"].date(), dry_run)
    else:
        counts["chain_rows"] = _delete_sqlite(ChainQuote._meta.db_table, "received_at", limits["raw"], dry_run)
        counts["ltp_rows"] = _delete_sqlite(LtpQuote._meta.db_table, "received_at", limits["raw"], dry_run)
    # Only the bars recorded from our own feed age out; imported history (a source set) is
    # what backtests of past years run on, and it costs a re-import to get back.
    recorded = MinuteBar.objects.filter(minute__lt=limits["bars"], source="")
    counts["minute_bars"] = _delete_orm(recorded, dry_run)
    counts["derived_metrics"] = _delete_orm(DerivedMetric.objects.filter(ts__lt=limits["metrics"]), dry_run)
    log.info("market data pruned", extra={"counts": counts, "dry_run": dry_run})
    return counts


_PARTITION = re.compile(r"_p(\d{8})$")


def _drop_partitions(table: str, keep_from: dt.date, dry_run: bool) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s",
            [table],
        )
        names = [row[0] for row in cursor.fetchall()]
        expired = []
        for name in names:
            match = _PARTITION.search(name)
            if match and dt.datetime.strptime(match.group(1), "%Y%m%d").date() < keep_from:  # noqa: DTZ007
                expired.append(name)
        if not dry_run:
            for name in expired:
                cursor.execute(f"DROP TABLE {name}")
    return len(expired)


def _delete_sqlite(table: str, column: str, before: dt.datetime, dry_run: bool) -> int:
    value = before.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    total = 0
    with connection.cursor() as cursor:
        if dry_run:
            cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} < %s", [value])  # noqa: S608
            return cursor.fetchone()[0]
        while True:
            with transaction.atomic():
                cursor.execute(
                    f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} WHERE {column} < %s LIMIT %s)",  # noqa: S608
                    [value, BATCH],
                )
                deleted = cursor.rowcount
            total += deleted
            if deleted < BATCH:
                return total


def _delete_orm(queryset, dry_run: bool) -> int:
    if dry_run:
        return queryset.count()
    total = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:BATCH])
        if not ids:
            return total
        with transaction.atomic():
            total += queryset.model.objects.filter(pk__in=ids).delete()[0]
