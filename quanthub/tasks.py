"""Celery tasks of the project's operations (scheduled by django-celery-beat rows
that migrations create; in-process without Redis)."""

from __future__ import annotations

from celery import shared_task

from quanthub.backup import backup


@shared_task(name="quanthub.nightly_backup")
def nightly_backup() -> dict:
    """Back up the database (and upload it when a bucket is configured); retention applies."""
    result = backup()
    return {"path": str(result.path), "bytes": result.size, "sha256": result.sha256, "s3_key": result.s3_key}
