"""Writes to trading data. Each function validates, changes, and audits in one
transaction; events for the dashboards go out after commit."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audit.chain import append as audit_append
from trading.models import Strategy
from trading.timeline import account_now


def save_strategy(strategy: Strategy, *, actor: str, changed: list[str] | None = None) -> Strategy:
    """Create or update a strategy (params already validated by ``full_clean``)."""
    with transaction.atomic():
        if strategy.pk is None:
            strategy.save()
            audit_append(
                "strategy.created",
                actor=actor,
                subject=f"strategy:{strategy.key}",
                payload={"params": strategy.params, "enabled": strategy.enabled},
                at=account_now(settings.QUANTHUB_ACCOUNT),
            )
            return strategy
        old = Strategy.objects.select_for_update().get(pk=strategy.pk)
        diff = {
            field: {"old": getattr(old, field), "new": getattr(strategy, field)}
            for field in ("name", "enabled", "params")
            if getattr(old, field) != getattr(strategy, field)
        }
        if not diff:
            return strategy
        strategy.version = old.version + 1
        strategy.save()
        audit_append(
            "strategy.changed",
            actor=actor,
            subject=f"strategy:{strategy.key}",
            payload={"version": strategy.version, "changes": diff, "fields": changed or sorted(diff)},
            at=account_now(settings.QUANTHUB_ACCOUNT),
        )
    return strategy


def set_strategy_enabled(strategy: Strategy, enabled: bool, *, actor: str) -> bool:
    """Enable or disable; returns False when it already was. Disabling stops new
    entries only: open trades still exit by their rules."""
    with transaction.atomic():
        updated = Strategy.objects.filter(pk=strategy.pk, enabled=not enabled).update(
            enabled=enabled,
            version=F("version") + 1,
            updated_at=timezone.now(),  # update() skips auto_now
        )
        if not updated:
            return False
        audit_append(
            "strategy.enabled" if enabled else "strategy.disabled",
            actor=actor,
            subject=f"strategy:{strategy.key}",
            payload={"enabled": enabled},
            at=account_now(settings.QUANTHUB_ACCOUNT),
        )
    strategy.refresh_from_db()
    return True
