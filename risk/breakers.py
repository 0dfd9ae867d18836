"""Circuit breakers.

* India VIX: on every tick, VIX's change over the last
  ``vix_change_window_s`` (60 s) above ``vix_breaker_sigma`` σ of such changes
  (seeded from the previous session's stored VIX) trips the breaker: REDUCING
  (only exposure-reducing orders) until VIX has been calm for
  ``vix_normalise_minutes``. ``VixMonitor`` is the pure statistics; ``trip``
  and ``clear`` record it (BreakerTrip, trading state, audit).
* Daily loss: a net loss of ``daily_loss_cap`` trips the breaker here
  (REDUCING, audited); the engine then flattens everything with the order
  path's flatten (``trading.orders.flatten.daily_loss_flatten``, Kill All's
  flatten without the broker kill switch) and HALTs until the next session.
  This module holds the rule and the state, never the order path.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from audit.chain import append as audit_append
from quanthub import metrics
from quanthub.clock import IST, SESSION_OPEN
from risk.models import BreakerTrip, TradingState
from risk.services import set_trading_state
from trading.alerts import raise_alert


@dataclass
class VixMonitor:
    """India VIX's change over the last ``window_s`` seconds against σ of such changes.

    Judged on every tick: the change from VIX as it stood ``window_s`` ago (the
    latest tick at or before then; before a full window has passed today, the
    session's first tick) to now. The distribution of ``window_s`` changes is
    seeded from the previous session's stored VIX (``seed``), so the breaker
    works from 09:15, and goes on learning from today's ticks once a full
    window exists. Trip: change > mean + ``sigma`` σ, with at least
    ``min_samples`` changes behind σ. Clear: ``normalise_minutes`` without an
    unusual change.
    """

    sigma: float = 3.0
    normalise_minutes: float = 15.0
    window_s: float = 60.0
    min_samples: int = 300
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    tripped_at: dt.datetime | None = None
    calm_since: dt.datetime | None = None
    recent: deque = field(default_factory=deque)  # (time, vix) of the last window_s and one before

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0

    def _learn(self, change: float) -> None:
        self.n += 1
        delta = change - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (change - self.mean)

    def _change(self, at: dt.datetime, vix: float) -> tuple[float | None, bool]:
        """(change over the window, whether a full window lies behind it)."""
        recent = self.recent
        recent.append((at, vix))
        cutoff = at - dt.timedelta(seconds=self.window_s)
        # Keep exactly one tick at or before the cutoff: VIX as it stood window_s ago.
        while len(recent) >= 2 and recent[1][0] <= cutoff:
            recent.popleft()
        if len(recent) < 2:
            return None, False
        then_at, then = recent[0]
        return vix - then, then_at <= cutoff

    def seed(self, ticks) -> int:
        """Learn the distribution from (time, vix) pairs of an earlier session; returns changes learnt."""
        learnt = 0
        for at, vix in ticks:
            change, full = self._change(at, float(vix))
            if change is not None and full:
                self._learn(change)
                learnt += 1
        self.recent.clear()  # the overnight move is not a window_s change
        return learnt

    def observe(self, at: dt.datetime, vix: float) -> str | None:
        """Feed one VIX tick; returns "trip", "clear" or None."""
        change, full = self._change(at, vix)
        if change is None:
            return None
        std = self.std
        unusual = self.n >= self.min_samples and std > 0 and change > self.mean + self.sigma * std
        if full:  # judged first, then it joins the distribution
            self._learn(change)
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
            at=at,
        )
        raise_alert("CRITICAL", "risk", f"{breaker} breaker tripped", reason, account=account, at=at)
    metrics.breaker_tripped(breaker)
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


def previous_session_vix(before: dt.datetime) -> list[tuple[dt.datetime, float]]:
    """The stored India VIX ticks of the latest session before ``before`` (oldest first)."""
    from marketdata.models import LtpQuote

    day_start = dt.datetime.combine(before.astimezone(IST).date(), dt.time(0), tzinfo=IST)
    last = LtpQuote.objects.filter(kind="VIX", received_at__lt=day_start).order_by("-received_at").first()
    if last is None:
        return []
    start = dt.datetime.combine(last.received_at.astimezone(IST).date(), dt.time(0), tzinfo=IST)
    rows = LtpQuote.objects.filter(kind="VIX", received_at__gte=start, received_at__lt=day_start).order_by(
        "received_at"
    )
    return [(ts.astimezone(IST), paise / 100.0) for ts, paise in rows.values_list("ts", "ltp_paise") if paise > 0]


def session_open_after(now: dt.datetime) -> dt.datetime:
    """The first session open strictly after ``now`` (today's, before 09:15 on a weekday)."""
    today = now.astimezone(IST)
    opening = dt.datetime.combine(today.date(), SESSION_OPEN, tzinfo=IST)
    if today.weekday() < 5 and now < opening:
        return opening
    return next_session_open(now)


def now() -> dt.datetime:
    return timezone.now()


@dataclass(frozen=True, slots=True)
class LossVerdict:
    """Whether today's loss trips the daily-loss breaker, and on whose figure."""

    trip: bool
    ours: object  # Decimal: our books' net P&L
    broker: object | None  # Decimal: the broker's net figure (its gross less our charges), None unknown
    why: str


def confirm_daily_loss(*, ours_net, ours_charges, broker_gross, cap) -> LossVerdict:
    """The daily-loss rule with broker truth: the breaker trips when the broker's
    figure confirms the loss, never on our books alone while the broker disagrees.

    ``broker_gross``: the broker's P&L for the day before charges (realised plus
    the open quantity marked at our book), or None when the broker could not say
    (then our books decide: the cap is a hard limit and an outage must not lift it).
    Charges are ours (the broker's P&L reports are before charges).
    """
    if ours_net > -cap:
        return LossVerdict(False, ours_net, None, "below the cap")
    if broker_gross is None:
        return LossVerdict(True, ours_net, None, "the broker's P&L is unavailable: our books decide")
    broker_net = broker_gross - ours_charges
    # Within 2 % of the cap (₹1 at least) the two agree: marks and charges round apart by
    # rupees, while the artefacts this guards against are whole positions' worth.
    tolerance = max(Decimal("1"), cap * Decimal("0.02"))
    if broker_net <= -cap + tolerance:
        return LossVerdict(True, ours_net, broker_net, "the broker's P&L confirms the loss")
    return LossVerdict(
        False,
        ours_net,
        broker_net,
        f"our books say ₹{ours_net}, the broker's figure is ₹{broker_net}: not a loss the broker confirms",
    )
