"""Instruments as data: lot sizes, strike steps, freeze quantities and expiries
come from the instrument master, never from literals in trading logic."""

from __future__ import annotations

from decimal import Decimal

from django.db import models


class Underlying(models.Model):
    class ExpiryRule(models.TextChoices):
        WEEKLY_AND_MONTHLY = "WEEKLY_AND_MONTHLY", "Weekly plus monthly"
        MONTHLY = "MONTHLY", "Monthly only"

    symbol = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=100, blank=True)
    exchange = models.CharField(max_length=8, default="NSE")
    security_id = models.CharField("Dhan security id of the index", max_length=20, blank=True)
    strike_step = models.DecimalField(max_digits=10, decimal_places=2)
    expiry_rule = models.CharField(max_length=20, choices=ExpiryRule.choices, default=ExpiryRule.MONTHLY)
    expiry_weekday = models.PositiveSmallIntegerField(
        default=1, help_text="0 = Monday … 6 = Sunday; NSE index options expire on Tuesday (1)."
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["symbol"]

    def __str__(self) -> str:
        return self.symbol


class Instrument(models.Model):
    class Kind(models.TextChoices):
        INDEX = "INDEX", "Index"
        FUT = "FUT", "Future"
        CE = "CE", "Call"
        PE = "PE", "Put"

    underlying = models.ForeignKey(Underlying, on_delete=models.PROTECT, related_name="instruments")
    kind = models.CharField(max_length=5, choices=Kind.choices)
    strike = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True)
    expiry = models.DateField(null=True, blank=True)
    lot_size = models.PositiveIntegerField()
    tick_size = models.DecimalField(max_digits=8, decimal_places=2, default=Decimal("0.05"))
    freeze_quantity = models.PositiveIntegerField(help_text="Largest quantity NSE accepts in one order.")
    exchange_segment = models.CharField(max_length=12, default="NSE_FNO")
    security_id = models.CharField("Dhan security id", max_length=20)
    trading_symbol = models.CharField(max_length=64)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["underlying__symbol", "expiry", "strike", "kind"]
        constraints = [
            models.UniqueConstraint(
                fields=["exchange_segment", "security_id"], name="instrument_segment_security_uniq"
            ),
            models.CheckConstraint(
                condition=models.Q(kind__in=["INDEX", "FUT"]) | models.Q(strike__isnull=False, expiry__isnull=False),
                name="instrument_option_has_strike_and_expiry",
            ),
        ]
        indexes = [models.Index(fields=["underlying", "kind", "expiry", "strike"])]

    def __str__(self) -> str:
        return self.trading_symbol

    @property
    def is_option(self) -> bool:
        return self.kind in (self.Kind.CE, self.Kind.PE)


class ExchangeHoliday(models.Model):
    """Trading holidays are data: an expiry that falls on one moves to the
    previous trading day."""

    date = models.DateField()
    exchange = models.CharField(max_length=8, default="NSE")
    description = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["date"]
        constraints = [models.UniqueConstraint(fields=["exchange", "date"], name="holiday_exchange_date_uniq")]

    def __str__(self) -> str:
        return f"{self.exchange} {self.date:%Y-%m-%d} {self.description}".strip()
