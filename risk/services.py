"""Writes to risk data, each audited with actor, reason and old/new values."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.forms.models import model_to_dict

from audit import actors
from audit.chain import append as audit_append
from quanthub.sql import Statement
from risk.models import BreakerTrip, RiskLimits, TradingState
from trading.events import publish_on_commit
from trading.models import ReconciliationBreak
from trading.timeline import account_now

_UNAUDITED = {"id", "updated_at", "updated_by", "version"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal | dt.time | dt.date):
        return str(value)
    return value


def save_risk_limits(limits: RiskLimits, *, actor: str) -> RiskLimits:
    """Validate and save limits; bump the version and audit the old and new values.

    Activating one set deactivates the others in the same transaction.
    """
    limits.full_clean()
    with transaction.atomic():
        old = RiskLimits.objects.select_for_update().filter(pk=limits.pk).first() if limits.pk else None
        before = {k: _jsonable(v) for k, v in model_to_dict(old).items()} if old else {}
        after = {k: _jsonable(v) for k, v in model_to_dict(limits).items()}
        changes = {
            key: {"old": before.get(key), "new": value}
            for key, value in after.items()
            if key not in _UNAUDITED and before.get(key) != value
        }
        if old is not None and not changes:
            return limits
        if limits.is_active:
            RiskLimits.objects.filter(is_active=True).exclude(pk=limits.pk).update(is_active=False)
        limits.version = (old.version + 1) if old else 1
        limits.updated_by = actor
        limits.save()
        audit_append(
            "risk_limits.changed" if old else "risk_limits.created",
            actor=actor,
            subject=f"risk_limits:{limits.pk}",
            payload={"version": limits.version, "changes": changes},
            at=account_now(settings.QUANTHUB_ACCOUNT),
        )
        publish_on_commit("limits", {"version": limits.version})
    return limits


# The account's state row, by a statement compiled once: every push of the dashboards reads it.
_STATE = Statement(lambda account: TradingState.objects.filter(account=account).order_by("pk")[:1], str)


def get_trading_state(account: str = "default") -> TradingState:
    found = _STATE.objects(account)
    if found:
        return found[0]
    state, _ = TradingState.objects.get_or_create(account=account)
    return state


def set_trading_state(
    new_state: str,
    *,
    actor: str,
    reason: str,
    account: str = "default",
    halted_until: dt.datetime | None = None,
    expected: str | None = None,
    at: dt.datetime | None = None,
) -> bool:
    """Move the account to ``new_state``; a conditional update, audited.

    ``at``: the clock of whoever acts (the engine's, for the engine and what it
    works for); for a person in the admin, the account's time line
    (``trading.timeline``: the wall clock live, the demo engine's carried on after it).

    With ``expected`` the change only happens from that state (returns False
    otherwise), so two callers racing cannot both act on a stale read.
    """
    if new_state not in TradingState.State.values:
        raise ValueError(f"Unknown trading state {new_state!r}")
    if not reason.strip():
        raise ValueError("A trading-state change needs a reason")
    with transaction.atomic():
        current = TradingState.objects.select_for_update().filter(account=account).first()
        if current is None:
            current = TradingState.objects.create(account=account)
        old_state = current.state
        if expected is not None and old_state != expected:
            return False
        # The same state again is a no-op, except that a HALT without an end replaces a
        # timed one (a risk manager's or Kill All's HALT over the daily loss breaker's):
        # it must not be lifted when the timed one would have been.
        if old_state == new_state and halted_until is None and current.halted_until is None:
            return False
        at = at or account_now(account)
        TradingState.objects.filter(pk=current.pk, state=old_state).update(
            state=new_state,
            actor=actor[:150],
            reason=reason,
            changed_at=at,
            halted_until=halted_until,
        )
        audit_append(
            "trading_state.changed",
            actor=actor,
            subject=f"account:{account}",
            payload={
                "old": old_state,
                "new": new_state,
                "reason": reason,
                "halted_until": halted_until.isoformat() if halted_until else None,
            },
            at=at,
        )
        publish_on_commit("trading_state", {"state": new_state}, account=account)
    return True


def roll_over_session(*, account: str = "default", now: dt.datetime) -> str | None:
    """At a session's open: lift a HALT whose ``halted_until`` has passed.

    Only the daily loss breaker writes ``halted_until`` (until the next session's
    open); every other HALT — Kill All, a risk manager's, reconciliation — is written
    with none and is never lifted here. A HALT whose time has come stays while any
    reconciliation break of the account is open. Returns why it stayed, or None when
    it was lifted or there was nothing to lift. The change is a conditional update on
    the HALT it read (state and ``halted_until``), so a risk manager's HALT set in
    between wins; the lift is audited and clears the daily loss breaker's trip.
    """
    actor = actors.component()  # the engine at its session open
    with transaction.atomic():
        current = TradingState.objects.select_for_update().filter(account=account).first()
        if current is None or current.state != TradingState.State.HALTED or current.halted_until is None:
            return None
        if current.halted_until > now:
            return "halted until a later session"
        breaks = ReconciliationBreak.objects.filter(account=account, resolved_at__isnull=True).count()
        if breaks:
            return f"{breaks} open reconciliation break(s)"
        reason = f"session open: the HALT until {current.halted_until.isoformat()} has expired"
        updated = TradingState.objects.filter(
            pk=current.pk, state=TradingState.State.HALTED, halted_until=current.halted_until
        ).update(state=TradingState.State.ACTIVE, actor=actor, reason=reason, changed_at=now, halted_until=None)
        if not updated:
            return None
        BreakerTrip.objects.filter(account=account, breaker="daily_loss", cleared_at__isnull=True).update(
            cleared_at=now, cleared_by=actor
        )
        audit_append(
            "trading_state.changed",
            actor=actor,
            subject=f"account:{account}",
            payload={"old": TradingState.State.HALTED, "new": TradingState.State.ACTIVE, "reason": reason},
            at=now,
        )
        publish_on_commit("trading_state", {"state": TradingState.State.ACTIVE}, account=account)
    return None
