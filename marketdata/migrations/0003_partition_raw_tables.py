"""On PostgreSQL, turn the raw tables into tables partitioned by day of arrival (``received_at``),
so retention drops whole partitions. SQLite keeps the plain tables (and
retention deletes in batches)."""

from __future__ import annotations

from django.db import migrations

RAW_TABLES = {
    "marketdata_chainquote": ["CREATE INDEX chainquote_underlying_ts ON marketdata_chainquote (underlying, ts)"],
    "marketdata_ltpquote": [],
}


def partition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, indexes in RAW_TABLES.items():
        schema_editor.execute(f"ALTER TABLE {table} RENAME TO {table}_plain")
        schema_editor.execute(
            f"CREATE TABLE {table} (LIKE {table}_plain INCLUDING DEFAULTS) PARTITION BY RANGE (received_at)"
        )
        schema_editor.execute(f"DROP TABLE {table}_plain")
        schema_editor.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (received_at, security_id)")
        for statement in indexes:
            schema_editor.execute(statement)


def unpartition(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, indexes in RAW_TABLES.items():
        schema_editor.execute(f"CREATE TABLE {table}_plain (LIKE {table} INCLUDING DEFAULTS)")
        schema_editor.execute(f"DROP TABLE {table} CASCADE")
        schema_editor.execute(f"ALTER TABLE {table}_plain RENAME TO {table}")
        schema_editor.execute(f"ALTER TABLE {table} ADD PRIMARY KEY (received_at, security_id)")
        for statement in indexes:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("marketdata", "0002_storage_tiers")]

    operations = [migrations.RunPython(partition, unpartition)]
