"""Circuit breakers.

* India VIX: a one-minute VIX change above ``vix_breaker_sigma`` σ of the
  day's distribution of one-minute changes trips the breaker: REDUCING (only
  exposure-reducing orders) until VIX has been calm for
  ``vix_normalise_minutes``. ``VixMonitor`` is the pure statistics; ``trip``
  and ``clear`` record it (BreakerTrip, trading state, audit).
* Daily loss: a net loss of ``daily_loss_cap`` switches to REDUCING, flattens
  everything (Kill All's flatten, without the broker kill switch) and HALTs
  until the next session (``enforce_daily_loss``).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from audit.chain import append as audit_append
from quanthub.clock import IST, SESSION_OPEN
from risk.models import BreakerTrip, TradingState
from risk.services import set_trading_state

MIN_SAMPLES = 15  # one-minute changes needed before the distribution means anything


@dataclass
class VixMonitor:
    sigma: float = 3.0
    normalise_minutes: float = 15.0
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    last_minute: dt.datetime | None = None
    last_value: float | None = None
    tripped_at: dt.datetime | None = None
    calm_since: dt.datetime | None = None

    def observe(self, at: dt.datetime, vix: float) -> str | None:
        """Feed one VIX tick; returns "trip", "clear" or None."""
        minute = at.replace(second=0, microsecond=0)
        if self.last_minute is None:
            self.last_minute, self.last_value = minute, vix
            return None
        if minute <= self.last_minute:
            return None
        change = vix - self.last_value
        std = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        unusual = self.n >= MIN_SAMPLES and std > 0 and change > self.mean + self.sigma * std
        # Welford: the day's distribution of one-minute changes, excluding the new one until judged.
        self.n += 1
        delta = change - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (change - self.mean)
        self.last_minute, self.last_value = minute, vix
        if unusual:
            self.calm_since = None
            if self.tripped_at is None:
                self.tripped_at = at
                return "trip"
            return None
        if self.tripped_at is not None:
            self.calm_since = self.calm_since or at
            if (at - self.calm_since).total_seconds() >= self.normalise_minutes * 60:
                self.tripped_at, self.calm_since = None, None
                return "clear"
        return None


def trip(
    breaker: str, reason: str, *, at: dt.datetime, details: dict | None = None, account: str = "default"
) -> BreakerTrip:
    with transaction.atomic():
        item = BreakerTrip.objects.create(
            account=account, breaker=breaker, tripped_at=at, reason=reason, details=details or {}
        )
        audit_append(
            "breaker.tripped",
            actor=f"breaker:{breaker}",
            subject=f"account:{account}",
            payload={"breaker": breaker, "reason": reason, "details": details or {}},
            at=at,
        )
        set_trading_state(
            TradingState.State.REDUCING,
            actor=f"breaker:{breaker}",
            reason=reason,
            account=account,
            expected=TradingState.State.ACTIVE,
        )
    return item


def clear(breaker: str, *, at: dt.datetime, actor: str = "system", account: str = "default") -> int:
    with transaction.atomic():
        cleared = BreakerTrip.objects.filter(account=account, breaker=breaker, cleared_at__isnull=True).update(
            cleared_at=at, cleared_by=actor
        )
        if cleared:
            audit_append(
                "breaker.cleared", actor=actor, subject=f"account:{account}", payload={"breaker": breaker}, at=at
            )
            if not BreakerTrip.objects.filter(account=account, cleared_at__isnull=True).exists():
                set_trading_state(
                    TradingState.State.ACTIVE,
                    actor=actor,
                    reason=f"{breaker} breaker normalised",
                    account=account,
                    expected=TradingState.State.REDUCING,
                )
    return cleared


def next_session_open(now: dt.datetime) -> dt.datetime:
    day = now.astimezone(IST).date() + dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return dt.datetime.combine(day, SESSION_OPEN, tzinfo=IST)


async def enforce_daily_loss(*, broker, oms, net_pnl, cap, now: dt.datetime, account: str = "default"):
    """Past the cap: REDUCING, flatten everything, then HALTED until the next session."""
    from asgiref.sync import sync_to_async

    from risk.killswitch import kill_all

    if net_pnl > -cap:
        return None
    reason = f"daily net loss ₹{-net_pnl} reached the cap of ₹{cap}"
    await sync_to_async(trip)("daily_loss", reason, at=now, account=account, details={"net_pnl": str(net_pnl)})
    summary = await kill_all(
        broker=broker,
        oms=oms,
        actor="breaker:daily_loss",
        reason=reason,
        account=account,
        activate_kill_switch=False,
        halt_first=False,
    )
    await sync_to_async(set_trading_state)(
        TradingState.State.HALTED,
        actor="breaker:daily_loss",
        reason=reason,
        account=account,
        halted_until=next_session_open(now),
    )
    return summary


def session_open_after(now: dt.datetime) -> dt.datetime:
    """The first session open strictly after ``now`` (today's, before 09:15 on a weekday)."""
    today = now.astimezone(IST)
    opening = dt.datetime.combine(today.date(), SESSION_OPEN, tzinfo=IST)
    if today.weekday() < 5 and now < opening:
        return opening
    return next_session_open(now)


def now() -> dt.datetime:
    return timezone.now()
