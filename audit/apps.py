from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.db.models.signals import post_migrate


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit"

    def ready(self) -> None:
        post_migrate.connect(_make_checkpoint_dir, sender=self)


def _make_checkpoint_dir(**kwargs) -> None:
    """An installed database has its checkpoint directory from the start, so a
    missing one later means it was removed (verify_audit says so)."""
    settings.AUDIT_CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
