"""Risk limits, the trading state, event days and breaker trips.

Defaults are the product's rules. Every limit is read from the active
RiskLimits at each intent, so an admin change applies without a restart.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import models

from quanthub.sql import Statement

# Exchange and broker ceilings that no configuration may exceed.
RETAIL_ORDER_RATE_CEILING = 9  # below NSE's 10/s retail-algo registration threshold and Dhan's 10/s cap
DHAN_MAX_MODIFICATIONS = 25


class RiskLimits(models.Model):
    name = models.CharField(max_length=60, default="Default")
    is_active = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=1, editable=False)

    daily_loss_cap = models.DecimalField(
        "daily net loss cap (₹)",
        max_digits=14,
        decimal_places=2,
        default=Decimal("25000"),
        help_text="A net loss of this much switches to REDUCING, flattens and HALTs for the day.",
    )
    margin_utilisation_cap_pct = models.DecimalField(
        "margin utilisation cap (%)", max_digits=5, decimal_places=2, default=Decimal("40")
    )
    max_lots_per_signal = models.PositiveIntegerField(default=10)
    max_lots_per_strategy = models.PositiveIntegerField(default=50)
    # Hedges are futures, sized by the options' delta: they have their own limit and
    # margin check, so a hedge never uses up the option lots a signal is entitled to.
    max_hedge_lots_per_signal = models.PositiveIntegerField(
        "max hedge futures lots per signal",
        default=10,
        help_text="Futures lots a signal may hold to hedge its options (10 hedges 10 option lots at delta 1).",
    )
    hedge_margin_cap_pct = models.DecimalField(
        "hedge margin cap (%)",
        max_digits=5,
        decimal_places=2,
        default=Decimal("90"),
        help_text="A hedge may use margin up to this share of the account's total margin.",
    )
    max_slippage_per_leg = models.DecimalField(
        "max expected slippage per leg (₹)", max_digits=8, decimal_places=2, default=Decimal("0.30")
    )
    max_spread_pct_of_mid = models.DecimalField(
        "max spread (% of mid)", max_digits=6, decimal_places=3, default=Decimal("0.300")
    )
    max_requotes = models.PositiveSmallIntegerField(default=3)
    max_requote_chase = models.DecimalField(
        "max requote chase (₹)", max_digits=8, decimal_places=2, default=Decimal("0.10")
    )
    partial_fill_min_pct = models.DecimalField(
        "partial fill minimum (%)",
        max_digits=5,
        decimal_places=2,
        default=Decimal("80"),
        help_text="Under this much filled after the wait, the remainder is cancelled.",
    )
    partial_fill_wait_ms = models.PositiveIntegerField(default=1000)
    kill_all_target_s = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("2"))
    order_rate_per_s = models.PositiveSmallIntegerField(
        default=RETAIL_ORDER_RATE_CEILING,
        help_text="Orders per second per account; above 9 only for a registered algo.",
    )
    registered_algo = models.BooleanField(default=False)
    algo_id = models.CharField("exchange algo id", max_length=40, blank=True)
    max_modifications_per_order = models.PositiveSmallIntegerField(default=20)
    entry_cutoff = models.TimeField("no new entries after (IST)", default=dt.time(15, 0))
    vix_breaker_sigma = models.DecimalField(max_digits=5, decimal_places=2, default=Decimal("3"))
    vix_normalise_minutes = models.PositiveIntegerField(default=15)
    vix_change_window_s = models.PositiveIntegerField(
        "VIX change window (s)", default=60, help_text="The breaker judges VIX's change over this many seconds."
    )
    vix_min_samples = models.PositiveIntegerField(
        "VIX minimum samples",
        default=300,
        help_text="Changes needed (seeded from the previous session) before the breaker can trip.",
    )
    feed_stale_chain_s = models.PositiveIntegerField(default=6)
    feed_stale_ltp_s = models.PositiveIntegerField(default=3)

    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=150, blank=True, editable=False)

    class Meta:
        verbose_name = "risk limits"
        verbose_name_plural = "risk limits"
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=models.Q(is_active=True), name="one_active_risklimits"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}{' (active)' if self.is_active else ''}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        positive = (
            "daily_loss_cap",
            "margin_utilisation_cap_pct",
            "max_lots_per_signal",
            "max_lots_per_strategy",
            "max_hedge_lots_per_signal",
            "hedge_margin_cap_pct",
            "max_slippage_per_leg",
            "max_spread_pct_of_mid",
            "partial_fill_min_pct",
            "partial_fill_wait_ms",
            "kill_all_target_s",
            "order_rate_per_s",
            "max_modifications_per_order",
            "vix_breaker_sigma",
            "vix_change_window_s",
            "feed_stale_chain_s",
            "feed_stale_ltp_s",
        )
        for name in positive:
            value = getattr(self, name)
            if value is not None and value <= 0:
                errors[name] = "Must be greater than zero."
        for name in ("margin_utilisation_cap_pct", "partial_fill_min_pct", "hedge_margin_cap_pct"):
            value = getattr(self, name)
            if value is not None and value > 100:
                errors[name] = "A percentage cannot exceed 100."
        if (
            self.max_lots_per_signal is not None
            and self.max_lots_per_strategy is not None
            and self.max_lots_per_signal > self.max_lots_per_strategy
        ):
            errors["max_lots_per_signal"] = "Lots per signal cannot exceed lots per strategy."
        if self.order_rate_per_s and self.order_rate_per_s > RETAIL_ORDER_RATE_CEILING and not self.registered_algo:
            errors["order_rate_per_s"] = (
                f"Above {RETAIL_ORDER_RATE_CEILING} orders/s needs a registered algo (tick 'registered algo' "
                "and give its algo id)."
            )
        if self.registered_algo and not self.algo_id.strip():
            errors["algo_id"] = "A registered algo needs its exchange algo id."
        if self.max_modifications_per_order and self.max_modifications_per_order >= DHAN_MAX_MODIFICATIONS:
            errors["max_modifications_per_order"] = f"Must stay under Dhan's cap of {DHAN_MAX_MODIFICATIONS}."
        if self.max_requote_chase is not None and self.max_requote_chase < 0:
            errors["max_requote_chase"] = "Cannot be negative."
        if errors:
            raise ValidationError(errors)

    def validate_constraints(self, exclude=None):
        # Activating a set deactivates the others inside save_risk_limits' transaction;
        # the database constraint still guards against two concurrent activations.
        super().validate_constraints(exclude=set(exclude or ()) | {"is_active"})

    @classmethod
    def active(cls) -> RiskLimits:
        """The active limits; the product defaults if none is stored yet. Read by a
        statement compiled once: the dashboards' every push and the gate ask it."""
        found = _ACTIVE_LIMITS.objects()
        return found[0] if found else cls()


_ACTIVE_LIMITS = Statement(lambda: RiskLimits.objects.filter(is_active=True).order_by("pk")[:1])


class TradingState(models.Model):
    class State(models.TextChoices):
        ACTIVE = "ACTIVE", "Active"
        REDUCING = "REDUCING", "Reducing only"
        HALTED = "HALTED", "Halted"

    account = models.CharField(max_length=40, unique=True, default="default")
    state = models.CharField(max_length=10, choices=State.choices, default=State.ACTIVE)
    actor = models.CharField(max_length=150, default="system")
    reason = models.TextField(blank=True)
    changed_at = models.DateTimeField(auto_now_add=True)
    halted_until = models.DateTimeField(
        null=True, blank=True, help_text="Set by the daily loss cap: no return to ACTIVE before this time."
    )

    class Meta:
        verbose_name = "trading state"

    def __str__(self) -> str:
        return f"{self.account}: {self.state}"


class EventDay(models.Model):
    class Kind(models.TextChoices):
        RBI_POLICY = "RBI_POLICY", "RBI policy"
        BUDGET = "BUDGET", "Union Budget"
        US_CPI = "US_CPI", "US CPI"
        EXCHANGE_HALT = "EXCHANGE_HALT", "Exchange halt"
        NSE_HOLIDAY = "NSE_HOLIDAY", "NSE trading holiday"
        OTHER = "OTHER", "Other"

    class Action(models.TextChoices):
        NO_NEW_ENTRIES = "NO_NEW_ENTRIES", "No new entries"
        REDUCE_ONLY = "REDUCE_ONLY", "Reduce only"
        HALT = "HALT", "Halt"

    date = models.DateField(db_index=True)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    action = models.CharField(max_length=16, choices=Action.choices, default=Action.NO_NEW_ENTRIES)
    note = models.CharField(max_length=200, blank=True)
    source = models.CharField(
        max_length=200, blank=True, help_text="Where the date comes from (the published schedule)."
    )
    provisional = models.BooleanField(
        default=False, help_text="Not yet in an official schedule: check it when the schedule is published."
    )

    class Meta:
        ordering = ["-date"]
        constraints = [models.UniqueConstraint(fields=["date", "kind"], name="eventday_date_kind_uniq")]

    def __str__(self) -> str:
        return f"{self.date:%Y-%m-%d} {self.get_kind_display()}"


class BreakerTrip(models.Model):
    account = models.CharField(max_length=40, default="default")
    breaker = models.CharField(max_length=40, help_text="e.g. vix, daily_loss, feed_stale")
    tripped_at = models.DateTimeField()
    reason = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    cleared_at = models.DateTimeField(null=True, blank=True)
    cleared_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["-tripped_at"]
        indexes = [models.Index(fields=["account", "breaker", "cleared_at"])]

    def __str__(self) -> str:
        return f"{self.breaker} at {self.tripped_at:%H:%M:%S}"

    @property
    def is_open(self) -> bool:
        return self.cleared_at is None


class GateRefusal(models.Model):
    """Every intent the risk gate refused, with the rule and its reason."""

    account = models.CharField(max_length=40, default="default")
    refused_at = models.DateTimeField(db_index=True)
    rule = models.CharField(max_length=40)
    reason = models.TextField()
    strategy_key = models.CharField(max_length=50, blank=True)
    signal_key = models.CharField(max_length=64, blank=True)
    security_id = models.CharField(max_length=20, blank=True)
    side = models.CharField(max_length=4, blank=True)
    purpose = models.CharField(max_length=8, blank=True)
    requested_lots = models.PositiveIntegerField(default=0)
    trading_state = models.CharField(max_length=10, blank=True)
    details = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-refused_at"]

    def __str__(self) -> str:
        return f"{self.rule}: {self.reason}"


class ChargeRate(models.Model):
    """Statutory and broker charges, versioned by the date they take effect.

    Percentages are of turnover (premium × quantity for options, price ×
    quantity for futures). The rate in force on the trade date applies.
    """

    class Kind(models.TextChoices):
        OPTIDX = "OPTIDX", "Index options"
        FUTIDX = "FUTIDX", "Index futures"

    instrument_kind = models.CharField(max_length=6, choices=Kind.choices)
    effective_from = models.DateField()
    brokerage_per_order = models.DecimalField("brokerage per executed order (₹)", max_digits=8, decimal_places=2)
    stt_sell_pct = models.DecimalField("STT on the sell side (%)", max_digits=8, decimal_places=5)
    exchange_txn_pct = models.DecimalField("exchange transaction charge (%)", max_digits=8, decimal_places=5)
    sebi_per_crore = models.DecimalField("SEBI turnover fee (₹ per crore)", max_digits=8, decimal_places=2)
    stamp_buy_pct = models.DecimalField("stamp duty on the buy side (%)", max_digits=8, decimal_places=5)
    gst_pct = models.DecimalField("GST on brokerage, exchange and SEBI charges (%)", max_digits=5, decimal_places=2)
    source = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["instrument_kind", "-effective_from"]
        constraints = [
            models.UniqueConstraint(fields=["instrument_kind", "effective_from"], name="chargerate_kind_from_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.get_instrument_kind_display()} from {self.effective_from}"

    def clean(self) -> None:
        negative = [
            f.name
            for f in self._meta.fields
            if isinstance(f, models.DecimalField) and getattr(self, f.name) is not None and getattr(self, f.name) < 0
        ]
        if negative:
            raise ValidationError(dict.fromkeys(negative, "Cannot be negative."))
