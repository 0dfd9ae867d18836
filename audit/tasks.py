"""Celery tasks of the audit room (scheduled by a django-celery-beat row that a
migration creates; run in-process by ``quanthub.scheduler`` without Redis)."""

from __future__ import annotations

from celery import shared_task

from audit.checkpoints import write_head


@shared_task(name="audit.checkpoint_close")
def checkpoint_close() -> dict:
    """After the close: a signed checkpoint of the chain as it stands, outside the database."""
    checkpoint = write_head(reason="close")
    return {"seq": checkpoint.seq, "hash": checkpoint.hash} if checkpoint is not None else {}
