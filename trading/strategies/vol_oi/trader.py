"""The Volume-OI trader: one explicit state machine per signal (pure).

DETECTED → PROBE (buy probe_lots of the option at the ask; each option fill is
delta-hedged in the future) → SCALED (on OI confirmation, buy scale_lots more,
hedged the same way) → EXITING (at +take_profit %, −stop_loss %, or the time
stop, whichever comes first) → CLOSED. A probe the gate refuses, or that fills
nothing, is REFUSED/CLOSED; a refused scale-up leaves the probe to exit by its
rules; an order cancelled part-filled leaves the phase to carry on with what
filled. Every transition is recorded in ``transitions`` for the engine to log
and audit.

Money is exact: cost is the Decimal sum of price × units bought, and the exit
thresholds are compared without dividing (``mid × held`` against ``cost ×
(100 ± pct) / 100``), so +40 % fires at exactly +40 % of the traded average.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

PROBE, SCALED, EXITING, CLOSED, REFUSED = "PROBE", "SCALED", "EXITING", "CLOSED", "REFUSED"
ZERO = Decimal("0")
HUNDRED = Decimal("100")


def as_decimal(value: float | int | str | Decimal) -> Decimal:
    """A config or feed number as the Decimal it was written as (0.15 → Decimal("0.15"))."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


@dataclass
class SignalTrade:
    key: str
    underlying: str
    security_id: str
    option_type: int
    opened_at: str  # ISO; JSON-able state
    phase: str = PROBE
    held: int = 0  # option units held
    cost: Decimal = ZERO  # exact sum of price × units bought (kept as a string in the saved state)
    pending_entry: int = 0  # units ordered, not yet filled or cancelled
    hedge_security_id: str = ""
    hedge_held: int = 0  # signed future units
    hedge_pending: int = 0  # signed future units ordered, not yet filled or cancelled
    exit_reason: str = ""
    features: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cost = as_decimal(self.cost)

    @property
    def average(self) -> Decimal:
        return self.cost / self.held if self.held else ZERO

    @property
    def opened(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.opened_at)


@dataclass(frozen=True, slots=True)
class Transition:
    signal_key: str
    old: str
    new: str
    reason: str
    at: dt.datetime


def exit_reason(
    trade: SignalTrade,
    mid: Decimal,
    now: dt.datetime,
    *,
    take_profit_pct: Decimal | float,
    stop_loss_pct: Decimal | float,
    time_stop_s: float,
) -> str:
    """Which exit rule fires for a held trade, or "" (pure, exact)."""
    if not trade.held:
        return ""
    tp, sl = as_decimal(take_profit_pct), as_decimal(stop_loss_pct)
    value = as_decimal(mid) * trade.held * HUNDRED  # the position at mid, ×100 so percents stay whole
    if trade.cost > 0 and value >= trade.cost * (HUNDRED + tp):
        return f"target +{tp.normalize():f}%"
    if trade.cost > 0 and value <= trade.cost * (HUNDRED - sl):
        return f"stop -{sl.normalize():f}%"
    if (now - trade.opened).total_seconds() >= time_stop_s:
        return f"time stop {time_stop_s / 60:g} min"
    return ""
