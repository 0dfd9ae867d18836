"""Instruments as data: lot sizes, strike steps, freeze quantities and expiries
come from the instrument master, never from literals in trading logic."""

from __future__ import annotations

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
    tick_size = models.DecimalField(
        max_digits=8, decimal_places=2, help_text="From the master (SEM_TICK_SIZE); every price is put on it."
    )
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
        return self.display

    @property
    def display(self) -> str:
        """The name a trader sees: unique per contract, expiry date included
        (Dhan's trading symbol is the same for the weekly and the monthly)."""
        from marketdata.master import display_name

        # Never a query (this runs in templates, logs and async code): the underlying when it is
        # loaded, else the first part of Dhan's trading symbol, which is the underlying's.
        underlying = self._state.fields_cache.get("underlying")
        symbol = underlying.symbol if underlying is not None else self.trading_symbol.split("-")[0].split(" ")[0]
        return display_name(symbol, self.kind, self.expiry, self.strike)

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


# --- Storage tiers. Raw rows are kept 7 days, minute bars 90 days, derived
# metrics 2 years (marketdata.retention). Prices are integer paise: exact,
# compact and fast to COPY. On PostgreSQL the two raw tables are partitioned
# by day (migration 0002), so retention drops whole partitions.


class ChainQuote(models.Model):
    """One contract's row of one option-chain snapshot."""

    # Keyed on arrival: a feed may resend a snapshot with an old exchange time.
    pk = models.CompositePrimaryKey("received_at", "security_id")
    ts = models.DateTimeField(help_text="Exchange time of the snapshot")
    seq = models.BigIntegerField(help_text="Feed sequence number of the snapshot")
    underlying = models.CharField(max_length=16)
    expiry = models.DateField()
    security_id = models.CharField(max_length=20)
    strike_paise = models.BigIntegerField()
    option_type = models.SmallIntegerField(help_text="0 = CE, 1 = PE")
    last_paise = models.BigIntegerField()
    bid_paise = models.BigIntegerField()
    ask_paise = models.BigIntegerField()
    bid_qty = models.BigIntegerField()
    ask_qty = models.BigIntegerField()
    volume = models.BigIntegerField()
    oi = models.BigIntegerField()
    prev_oi = models.BigIntegerField()
    iv = models.FloatField()
    delta = models.FloatField()
    gamma = models.FloatField()
    theta = models.FloatField()
    vega = models.FloatField()
    flags = models.IntegerField(default=0)
    underlying_paise = models.BigIntegerField()
    received_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["underlying", "ts"], name="chainquote_underlying_ts"),
            # An underlying's latest snapshot (its spot, its latest chain) without a scan.
            models.Index(fields=["underlying", "received_at"], name="chainquote_underlying_recv"),
        ]
        ordering = ["received_at", "seq"]

    def __str__(self) -> str:
        return f"{self.security_id} @ {self.ts:%Y-%m-%d %H:%M:%S}"


class LtpQuote(models.Model):
    pk = models.CompositePrimaryKey("received_at", "security_id")
    ts = models.DateTimeField(help_text="Exchange time of the tick")
    seq = models.BigIntegerField()
    security_id = models.CharField(max_length=20)
    exchange_segment = models.CharField(max_length=12)
    symbol = models.CharField(max_length=32)
    kind = models.CharField(max_length=5)
    ltp_paise = models.BigIntegerField()
    received_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.symbol} {self.ltp_paise / 100:.2f} @ {self.ts:%H:%M:%S}"


class MinuteBar(models.Model):
    minute = models.DateTimeField()
    security_id = models.CharField(max_length=20)
    symbol = models.CharField(max_length=40, blank=True)
    open_paise = models.BigIntegerField()
    high_paise = models.BigIntegerField()
    low_paise = models.BigIntegerField()
    close_paise = models.BigIntegerField()
    volume = models.BigIntegerField(default=0)
    oi = models.BigIntegerField(default=0)
    # Where the bar came from: "" for bars this installation recorded from its own
    # feed, "dhan:rollingoption" / "dhan:intraday" for imported history.
    source = models.CharField(max_length=24, blank=True, default="")
    iv = models.FloatField(null=True, blank=True, help_text="Implied volatility (%), when the source gives it")
    spot_paise = models.BigIntegerField(null=True, blank=True, help_text="Underlying at the bar's close, options only")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["security_id", "minute"], name="minutebar_security_minute")]
        indexes = [models.Index(fields=["minute"], name="minutebar_minute")]

    def __str__(self) -> str:
        return f"{self.security_id} {self.minute:%Y-%m-%d %H:%M}"


class DerivedMetric(models.Model):
    ts = models.DateTimeField(db_index=True)
    name = models.CharField(max_length=60)
    key = models.CharField(max_length=40, blank=True)
    value = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["name", "key", "ts"], name="derivedmetric_name_key_ts")]

    def __str__(self) -> str:
        return f"{self.name}[{self.key}] = {self.value}"


class HistoryFetch(models.Model):
    """One completed request range of a history import: what makes an import
    resumable (a re-run skips ranges already fetched, empty ones included)."""

    source = models.CharField(max_length=24)
    key = models.CharField(max_length=80, help_text="What was asked for, e.g. NIFTY:ATM+1:CALL or 13:IDX_I")
    date_from = models.DateField()
    date_to = models.DateField()
    bars = models.PositiveIntegerField(default=0)
    fetched_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "key", "date_from", "date_to"], name="historyfetch_range_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.source} {self.key} {self.date_from}–{self.date_to}"


class AnomalyModel(models.Model):
    """One trained Isolation Forest of one underlying (marketdata.anomaly).

    The artefact is a file under ``VAR_DIR/anomaly``; ``sha256`` is checked
    before it is loaded, so a replaced or corrupted file is never unpickled.
    At most one version per underlying is ``live``: the newest, unless an
    operator pinned an older one (admin: pin, unpin, roll back).
    """

    underlying = models.CharField(max_length=16)
    trained_for = models.DateField(help_text="The session after whose close it was trained")
    window_start = models.DateField(help_text="First session in the training window")
    window_end = models.DateField(help_text="Last session in the training window")
    sessions = models.PositiveSmallIntegerField()
    samples = models.PositiveIntegerField(help_text="Contract snapshots trained on")
    contamination = models.FloatField()
    n_estimators = models.PositiveSmallIntegerField()
    max_samples = models.PositiveSmallIntegerField()
    score_quantiles = models.JSONField(
        help_text="Raw Isolation Forest scores of the training rows: p50, p90, p99, p99.9"
    )
    artefact = models.CharField(max_length=255, help_text="Path under VAR_DIR")
    sha256 = models.CharField(max_length=64)
    train_seconds = models.FloatField(default=0.0)
    live = models.BooleanField(default=False)
    pinned = models.BooleanField(default=False, help_text="Kept live: nightly training does not replace it")
    retired = models.BooleanField(default=False, help_text="Rolled back: never made live again by a rollback")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["underlying", "-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["underlying"], condition=models.Q(live=True), name="anomalymodel_one_live_per_underlying"
            )
        ]

    def __str__(self) -> str:
        return f"{self.underlying} v{self.pk} ({self.trained_for:%Y-%m-%d})"
