"""Strategies, signals, orders, fills, positions and round-trip trades.

Money is exact: prices and P&L are Decimal with two places (every instrument's
tick fits), quantities are integers in units (lots × lot size). Greeks are floats:
they are analytics, not accounting.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from marketdata.models import Instrument

PRICE = {"max_digits": 14, "decimal_places": 2}
MONEY = {"max_digits": 16, "decimal_places": 2, "default": 0}
# An average of fills at different prices: a fraction of a paisa, kept to four places
# (rounded to paise it misstates realised P&L per unit).
AVERAGE_COST = {"max_digits": 16, "decimal_places": 4, "default": 0}


class Strategy(models.Model):
    key = models.SlugField(max_length=50, unique=True, help_text="Registry key, e.g. vol_oi.")
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(
        default=False, help_text="Disabled: no new entries; open trades still exit by their rules."
    )
    params = models.JSONField(default=dict, blank=True, help_text="Validated against the strategy's config schema.")
    version = models.PositiveIntegerField(default=1, editable=False)
    state = models.JSONField(default=dict, blank=True, editable=False, help_text="Persisted strategy state.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        verbose_name_plural = "strategies"
        permissions = [("toggle_strategy", "Can enable or disable a strategy")]

    def __str__(self) -> str:
        return self.name or self.key

    def clean(self) -> None:
        from trading.strategies.registry import StrategyConfigError, UnknownStrategy, validate_params

        try:
            self.params = validate_params(self.key, self.params or {})
        except UnknownStrategy as exc:
            raise ValidationError({"key": str(exc)}) from None
        except StrategyConfigError as exc:
            raise ValidationError({"params": exc.messages}) from None


class Signal(models.Model):
    class Phase(models.TextChoices):
        DETECTED = "DETECTED", "Detected"
        PROBE = "PROBE", "Probe"
        SCALED = "SCALED", "Scaled"
        EXITING = "EXITING", "Exiting"
        CLOSED = "CLOSED", "Closed"
        REFUSED = "REFUSED", "Refused"

    strategy = models.ForeignKey(Strategy, on_delete=models.PROTECT, related_name="signals")
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="signals")
    key = models.CharField(max_length=64, unique=True, help_text="Deterministic id from the strategy.")
    features = models.JSONField(default=dict)
    phase = models.CharField(max_length=10, choices=Phase.choices, default=Phase.DETECTED)
    detected_at = models.DateTimeField()
    confirmed_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-detected_at"]
        indexes = [models.Index(fields=["strategy", "-detected_at"])]

    def __str__(self) -> str:
        return f"{self.strategy.key}:{self.instrument} {self.phase}"


class Order(models.Model):
    class Side(models.TextChoices):
        BUY = "BUY", "Buy"
        SELL = "SELL", "Sell"

    class Type(models.TextChoices):
        LIMIT = "LIMIT", "Limit"
        MARKET = "MARKET", "Market"

    class Purpose(models.TextChoices):
        ENTRY = "ENTRY", "Entry"
        SCALE = "SCALE", "Scale"
        HEDGE = "HEDGE", "Hedge"
        EXIT = "EXIT", "Exit"
        KILL = "KILL", "Kill All"
        EXTERNAL = "EXTERNAL", "Adopted external"

    class State(models.TextChoices):
        NEW = "NEW", "New"
        SUBMITTING = "SUBMITTING", "Submitting"
        OPEN = "OPEN", "Open"
        PARTIAL = "PARTIAL", "Partially filled"
        FILLED = "FILLED", "Filled"
        CANCELLED = "CANCELLED", "Cancelled"
        REJECTED = "REJECTED", "Rejected"
        UNKNOWN = "UNKNOWN", "Unknown"

    TERMINAL_STATES = (State.FILLED, State.CANCELLED, State.REJECTED)
    LIVE_STATES = (State.NEW, State.SUBMITTING, State.OPEN, State.PARTIAL, State.UNKNOWN)

    client_order_id = models.CharField(max_length=25, unique=True, help_text="Sent to Dhan as correlationId.")
    broker_order_id = models.CharField(max_length=40, null=True, blank=True, unique=True)
    account = models.CharField(max_length=40, default="default")
    strategy = models.ForeignKey(Strategy, on_delete=models.PROTECT, null=True, blank=True, related_name="orders")
    signal = models.ForeignKey(Signal, on_delete=models.PROTECT, null=True, blank=True, related_name="orders")
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="orders")
    parent = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="slices",
        help_text="Set on the slices of an order above the freeze quantity.",
    )
    side = models.CharField(max_length=4, choices=Side.choices)
    purpose = models.CharField(max_length=8, choices=Purpose.choices, default=Purpose.ENTRY)
    order_type = models.CharField(max_length=6, choices=Type.choices, default=Type.LIMIT)
    quantity = models.PositiveIntegerField()
    limit_price = models.DecimalField(**PRICE, null=True, blank=True)
    first_price = models.DecimalField(**PRICE, null=True, blank=True, help_text="Price of the first quote.")
    filled_quantity = models.PositiveIntegerField(default=0)
    average_price = models.DecimalField(**PRICE, null=True, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.NEW, db_index=True)
    reject_code = models.CharField(max_length=40, blank=True)
    reason = models.TextField(blank=True, help_text="Why it was refused, rejected, cancelled or unknown.")
    requote_count = models.PositiveSmallIntegerField(default=0)
    modification_count = models.PositiveSmallIntegerField(default=0)

    # On the engine's clock (the order manager writes it), like committed_at and the state
    # stamps below: the simulated one in the demo and in replays. updated_at is row meta.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    submitting_at = models.DateTimeField(null=True, blank=True)
    open_at = models.DateTimeField(null=True, blank=True)
    partial_at = models.DateTimeField(null=True, blank=True)
    filled_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    rejected_at = models.DateTimeField(null=True, blank=True)
    unknown_at = models.DateTimeField(null=True, blank=True)
    # Latency audit: snapshot received → intent → gate → commit → sent → ack → fill.
    snapshot_at = models.DateTimeField(null=True, blank=True)
    intent_at = models.DateTimeField(null=True, blank=True)
    gate_passed_at = models.DateTimeField(null=True, blank=True)
    committed_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    acked_at = models.DateTimeField(null=True, blank=True)
    first_fill_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        permissions = [
            ("kill_all", "Can trigger Kill All"),
            ("resolve_reconciliation", "Can resolve reconciliation breaks"),
        ]
        indexes = [models.Index(fields=["account", "state"]), models.Index(fields=["strategy", "-created_at"])]
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gt=0), name="order_quantity_positive"),
            models.CheckConstraint(
                condition=models.Q(filled_quantity__lte=models.F("quantity")), name="order_not_overfilled"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.client_order_id} {self.side} {self.quantity} {self.instrument} {self.state}"

    @property
    def is_terminal(self) -> bool:
        return self.state in self.TERMINAL_STATES

    @property
    def remaining_quantity(self) -> int:
        return self.quantity - self.filled_quantity


class Fill(models.Model):
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="fills")
    broker_trade_id = models.CharField(max_length=40, unique=True)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(**PRICE)
    filled_at = models.DateTimeField()
    charges = models.DecimalField(**MONEY)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-filled_at"]

    def __str__(self) -> str:
        return f"{self.broker_trade_id} {self.quantity}@{self.price}"


class Position(models.Model):
    account = models.CharField(max_length=40, default="default")
    strategy = models.ForeignKey(Strategy, on_delete=models.PROTECT, null=True, blank=True, related_name="positions")
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="positions")
    signal = models.ForeignKey(Signal, on_delete=models.SET_NULL, null=True, blank=True, related_name="positions")
    net_quantity = models.IntegerField(default=0, help_text="Units; negative when short.")
    # An average of fills needs more places than a price (apply_fill keeps four);
    # with two, PostgreSQL would round what SQLite keeps.
    average_price = models.DecimalField(**AVERAGE_COST)
    last_price = models.DecimalField(**PRICE, null=True, blank=True)
    realised_pnl = models.DecimalField(**MONEY)
    unrealised_pnl = models.DecimalField(**MONEY)
    charges = models.DecimalField(**MONEY)
    delta = models.FloatField(null=True, blank=True)
    gamma = models.FloatField(null=True, blank=True)
    theta = models.FloatField(null=True, blank=True)
    vega = models.FloatField(null=True, blank=True)
    stop_price = models.DecimalField(**PRICE, null=True, blank=True)
    target_price = models.DecimalField(**PRICE, null=True, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    ttl_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="Time-to-live from opened_at.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instrument__underlying__symbol", "instrument__expiry", "instrument__strike"]
        permissions = [("exit_position", "Can exit a position from the dashboard")]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "strategy", "instrument"], name="position_account_strategy_instrument_uniq"
            ),
            models.UniqueConstraint(
                fields=["account", "instrument"],
                condition=models.Q(strategy__isnull=True),
                name="position_unassigned_instrument_uniq",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.instrument} {self.net_quantity:+d}"

    @property
    def is_open(self) -> bool:
        return self.net_quantity != 0

    @property
    def net_pnl(self):
        return self.realised_pnl + self.unrealised_pnl - self.charges


class Trade(models.Model):
    """A round trip: opened by entry fills, closed when the position is flat."""

    class Direction(models.TextChoices):
        LONG = "LONG", "Long"
        SHORT = "SHORT", "Short"

    account = models.CharField(max_length=40, default="default")
    strategy = models.ForeignKey(Strategy, on_delete=models.PROTECT, null=True, blank=True, related_name="trades")
    signal = models.ForeignKey(Signal, on_delete=models.SET_NULL, null=True, blank=True, related_name="trades")
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="trades")
    direction = models.CharField(max_length=5, choices=Direction.choices)
    quantity = models.PositiveIntegerField()
    entry_price = models.DecimalField(**PRICE)
    exit_price = models.DecimalField(**PRICE)
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField(db_index=True)
    gross_pnl = models.DecimalField(**MONEY)
    charges = models.DecimalField(**MONEY)
    net_pnl = models.DecimalField(**MONEY)
    exit_reason = models.CharField(max_length=40, blank=True)
    risk_amount = models.DecimalField(
        **MONEY, help_text="Money at risk at entry (to the stop), for reward-to-risk ratios."
    )

    class Meta:
        ordering = ["-closed_at"]

    def __str__(self) -> str:
        return f"{self.instrument} {self.direction} {self.quantity} net {self.net_pnl}"


class EngineHeartbeat(models.Model):
    """One row per engine process; the active one beats every second."""

    class Role(models.TextChoices):
        ACTIVE = "ACTIVE", "Active"
        STANDBY = "STANDBY", "Standby"
        STOPPED = "STOPPED", "Stopped"

    account = models.CharField(max_length=40, default="default")
    engine_id = models.CharField(max_length=64, unique=True)
    hostname = models.CharField(max_length=100, blank=True)
    pid = models.PositiveIntegerField(default=0)
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.STANDBY)
    broker = models.CharField(max_length=10, default="paper")
    feed = models.CharField(max_length=10, default="sim")
    started_at = models.DateTimeField()
    beat_at = models.DateTimeField(db_index=True)
    market_time = models.DateTimeField(null=True, blank=True, help_text="The engine clock (simulated in replay).")
    feed_health = models.JSONField(default=dict, blank=True)
    stats = models.JSONField(default=dict, blank=True)
    feed_state = models.JSONField(
        default=dict, blank=True, help_text="Where a simulated market stood at market_time, for a restart to resume."
    )

    class Meta:
        ordering = ["-beat_at"]

    def __str__(self) -> str:
        return f"{self.engine_id} {self.role}"


class Alert(models.Model):
    class Level(models.TextChoices):
        INFO = "INFO", "Info"
        WARNING = "WARNING", "Warning"
        CRITICAL = "CRITICAL", "Critical"

    account = models.CharField(max_length=40, default="default")
    level = models.CharField(max_length=8, choices=Level.choices, default=Level.WARNING)
    source = models.CharField(max_length=40, help_text="e.g. risk, oms, feed, token, reconciliation")
    title = models.CharField(max_length=200)
    message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True)
    deliveries = models.JSONField(default=dict, blank=True, help_text="Per sink: delivered, attempts, last error.")

    class Meta:
        ordering = ["-created_at"]
        permissions = [("acknowledge_alert", "Can acknowledge alerts")]

    def __str__(self) -> str:
        return f"[{self.level}] {self.title}"


class ReconciliationBreak(models.Model):
    """A difference between the broker's view and ours; trading stays HALTED
    until every open break is resolved."""

    class Kind(models.TextChoices):
        MISSING_AT_BROKER = "MISSING_AT_BROKER", "Ours, not at broker"
        EXTRA_AT_BROKER = "EXTRA_AT_BROKER", "At broker, not ours"
        ORDER_MISMATCH = "ORDER_MISMATCH", "Order differs"
        POSITION_MISMATCH = "POSITION_MISMATCH", "Position differs"
        NO_POSITION_REPORT = "NO_POSITION_REPORT", "Broker gave no position report"

    account = models.CharField(max_length=40, default="default")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    key = models.CharField(max_length=100, help_text="Client order id, broker order id or security id.")
    ours = models.JSONField(default=dict, blank=True)
    broker = models.JSONField(default=dict, blank=True)
    detected_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.CharField(max_length=150, blank=True)
    resolution = models.TextField(blank=True)

    class Meta:
        ordering = ["-detected_at"]
        indexes = [models.Index(fields=["account", "resolved_at"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"


class BacktestRun(models.Model):
    class Status(models.TextChoices):
        PENDING = "PENDING", "Pending"
        RUNNING = "RUNNING", "Running"
        DONE = "DONE", "Done"
        FAILED = "FAILED", "Failed"
        CANCELLED = "CANCELLED", "Cancelled"

    started_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    date_from = models.DateField()
    date_to = models.DateField()
    seed = models.IntegerField(null=True, blank=True)
    scenario = models.JSONField(default=dict, blank=True)
    report = models.JSONField(default=dict, blank=True)
    decision_hash = models.CharField(max_length=64, blank=True)
    report_path = models.CharField(max_length=300, blank=True)
    # Fan-out runs (one task per day and parameter set); a sequential run keeps the defaults.
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DONE)
    options = models.JSONField(default=dict, blank=True, help_text="source, minutes, strategies, grid, workers")
    tasks_total = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"Backtest {self.date_from}–{self.date_to} seed {self.seed}"


class BacktestTask(models.Model):
    """One (day, parameter set) of a fan-out run, under its own account namespace."""

    class State(models.TextChoices):
        PENDING = "PENDING", "Pending"
        RUNNING = "RUNNING", "Running"
        DONE = "DONE", "Done"
        FAILED = "FAILED", "Failed"
        CANCELLED = "CANCELLED", "Cancelled"

    run = models.ForeignKey(BacktestRun, on_delete=models.CASCADE, related_name="tasks")
    day = models.DateField()
    day_index = models.PositiveIntegerField(help_text="Position of the day in the run: the seed is seed + index")
    param_index = models.PositiveIntegerField(default=0)
    params = models.JSONField(default=dict, blank=True, help_text="Strategy parameters this task overrides")
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    result = models.JSONField(default=dict, blank=True)
    decision_hash = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["param_index", "day"]
        constraints = [
            models.UniqueConstraint(fields=["run", "day", "param_index"], name="backtesttask_run_day_params_uniq")
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} {self.day} params #{self.param_index}"


# --- Paper broker account: lives in the database so a restart sees the same book.


class PaperAccount(models.Model):
    account = models.CharField(max_length=40, unique=True, default="default")
    cash = models.DecimalField(max_digits=16, decimal_places=2)
    realised_pnl = models.DecimalField(**MONEY)
    kill_switch_active = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"paper:{self.account}"


class PaperOrder(models.Model):
    account = models.CharField(max_length=40, default="default")
    broker_order_id = models.CharField(max_length=40, unique=True)
    correlation_id = models.CharField(max_length=25, unique=True)
    security_id = models.CharField(max_length=20)
    exchange_segment = models.CharField(max_length=12, default="NSE_FNO")
    side = models.CharField(max_length=4)
    order_type = models.CharField(max_length=6)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(**PRICE, null=True, blank=True)
    status = models.CharField(
        max_length=12, help_text="Dhan status names: PENDING, TRADED, PART_TRADED, CANCELLED, REJECTED"
    )
    filled_quantity = models.PositiveIntegerField(default=0)
    average_price = models.DecimalField(**PRICE, null=True, blank=True)
    margin_blocked = models.DecimalField(**MONEY)
    reject_code = models.CharField(max_length=40, blank=True)
    reason = models.TextField(blank=True)
    modifications = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["account", "status"])]

    def __str__(self) -> str:
        return f"{self.broker_order_id} {self.side} {self.quantity} {self.security_id} {self.status}"


class PaperTrade(models.Model):
    order = models.ForeignKey(PaperOrder, on_delete=models.PROTECT, related_name="trades")
    trade_id = models.CharField(max_length=40, unique=True)
    quantity = models.PositiveIntegerField()
    price = models.DecimalField(**PRICE)
    traded_at = models.DateTimeField()

    class Meta:
        ordering = ["traded_at"]

    def __str__(self) -> str:
        return f"{self.trade_id} {self.quantity}@{self.price}"


class PaperPosition(models.Model):
    account = models.CharField(max_length=40, default="default")
    security_id = models.CharField(max_length=20)
    exchange_segment = models.CharField(max_length=12, default="NSE_FNO")
    net_quantity = models.IntegerField(default=0)
    average_price = models.DecimalField(**AVERAGE_COST)
    realised_pnl = models.DecimalField(**MONEY)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["account", "exchange_segment", "security_id"], name="paperposition_uniq")
        ]

    def __str__(self) -> str:
        return f"{self.security_id} {self.net_quantity:+d}"


class FlattenRequest(models.Model):
    """A request to get out (Kill All, or one position's exit), handed to whoever
    sends for the account: the engine holding the account's lock picks it up within
    a second; when no engine takes it within two seconds the requester works it
    itself (``trading.orders.requests``). The requester reads the result here."""

    class Kind(models.TextChoices):
        KILL_ALL = "KILL_ALL", "Kill All"
        EXIT = "EXIT", "Exit a position"

    class State(models.TextChoices):
        PENDING = "PENDING", "Pending"
        TAKEN = "TAKEN", "Being worked"
        DONE = "DONE", "Done"

    account = models.CharField(max_length=40, default="default")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    position = models.ForeignKey(
        Position, on_delete=models.SET_NULL, null=True, blank=True, related_name="flatten_requests"
    )
    actor = models.CharField(max_length=150)
    reason = models.CharField(max_length=500, blank=True)
    state = models.CharField(max_length=7, choices=State.choices, default=State.PENDING)
    deadline_s = models.FloatField(default=15.0, help_text="How long the flatten keeps working before it gives up.")
    taken_by = models.CharField(max_length=100, blank=True, help_text="Engine id, or standalone:<host>-<pid>.")
    # requested_at is the requester's wall time (the two-second hand-over is measured
    # on it); taken_at and finished_at come from the clock of whoever worked it.
    requested_at = models.DateTimeField(db_index=True)
    taken_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-requested_at"]
        indexes = [models.Index(fields=["account", "state"])]

    def __str__(self) -> str:
        return f"{self.kind} {self.account} {self.state}"


class OrderRateWindow(models.Model):
    """The order-rate window of one account, shared by every process that sends for
    it (the engine, a standalone Kill All): wall-clock send times of the last second
    and the priority lane's claim (``trading.brokers.ratelimit.DatabaseWindow``)."""

    account = models.CharField(max_length=40, unique=True)
    sends = models.JSONField(default=list, blank=True)
    priority_until = models.FloatField(default=0.0, help_text="Normal sends wait while a priority send waits.")
    touched = models.FloatField(default=0.0)

    def __str__(self) -> str:
        return f"rate window {self.account}"
