"""Append-only audit records.

The ORM refuses every update and delete, for single objects and querysets
alike; on PostgreSQL a trigger refuses them in the database too. Records are
hash-chained (see ``audit.chain``) so any edit, deletion, insertion or
reordering is detectable by ``manage.py verify_audit``.
"""

from __future__ import annotations

from django.db import models


class AuditImmutableError(RuntimeError):
    """Raised on any attempt to change or remove an audit record."""


class AuditRecordQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AuditImmutableError("Audit records are append-only: update refused")

    def delete(self):
        raise AuditImmutableError("Audit records are append-only: delete refused")

    def bulk_update(self, objs, fields, batch_size=None):
        raise AuditImmutableError("Audit records are append-only: bulk_update refused")

    def update_or_create(self, *args, **kwargs):
        raise AuditImmutableError("Audit records are append-only: update_or_create refused")

    _raw_delete = delete


class AuditRecord(models.Model):
    seq = models.PositiveBigIntegerField(unique=True, help_text="Position in the chain, from 1.")
    created_at = models.DateTimeField(db_index=True)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=60, db_index=True)
    subject = models.CharField(max_length=200, blank=True)
    payload = models.JSONField(default=dict)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    mac = models.CharField("HMAC", max_length=64)

    objects = AuditRecordQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]
        permissions = [
            ("export_audit", "Can export audit records"),
            ("verify_audit", "Can verify the audit chain"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.subject}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AuditImmutableError("Audit records are append-only: update refused")
        kwargs["force_insert"] = True
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AuditImmutableError("Audit records are append-only: delete refused")


class AuditChainHead(models.Model):
    """One row per chain holding the last sequence number and hash.

    Appenders lock it (SELECT … FOR UPDATE on PostgreSQL, the database write
    lock on SQLite), which serialises appends without a table lock.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.PositiveBigIntegerField(default=0)
    hash = models.CharField(max_length=64, default="0" * 64)
    mac = models.CharField("HMAC", max_length=64, default="", help_text="HMAC of head|seq|hash with the audit key.")

    class Meta:
        verbose_name = "audit chain head"

    def __str__(self) -> str:
        return f"chain {self.id} at #{self.seq}"
