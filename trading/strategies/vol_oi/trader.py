"""The Volume-OI trader: one explicit state machine per signal (pure).

DETECTED → PROBE (buy probe_lots of the option at the ask, hedge its delta in
the future) → SCALED (on OI confirmation, buy scale_lots more) → EXITING (at
+take_profit %, −stop_loss %, or the time stop, whichever comes first) →
CLOSED. A probe the gate refuses, or that fills nothing, is REFUSED/CLOSED; a
refused scale-up leaves the probe to exit by its rules; an order cancelled
part-filled leaves the phase to carry on with what filled. Every transition
is recorded in ``transitions`` for the engine to log and audit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

PROBE, SCALED, EXITING, CLOSED, REFUSED = "PROBE", "SCALED", "EXITING", "CLOSED", "REFUSED"


@dataclass
class SignalTrade:
    key: str
    underlying: str
    security_id: str
    option_type: int
    opened_at: str  # ISO; JSON-able state
    phase: str = PROBE
    held: int = 0  # option units held
    cost: float = 0.0  # sum of price × units bought
    pending_entry: int = 0  # units ordered, not yet filled or cancelled
    hedge_security_id: str = ""
    hedge_held: int = 0  # signed future units
    exit_reason: str = ""
    features: dict = field(default_factory=dict)

    @property
    def average(self) -> float:
        return self.cost / self.held if self.held else 0.0

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
    mid: float,
    now: dt.datetime,
    *,
    take_profit_pct: float,
    stop_loss_pct: float,
    time_stop_s: float,
) -> str:
    """Which exit rule fires for a held trade, or "" (pure)."""
    if not trade.held:
        return ""
    change = (mid / trade.average - 1.0) * 100.0 if trade.average else 0.0
    if change >= take_profit_pct:
        return f"target +{take_profit_pct:g}%"
    if change <= -stop_loss_pct:
        return f"stop -{stop_loss_pct:g}%"
    if (now - trade.opened).total_seconds() >= time_stop_s:
        return f"time stop {time_stop_s / 60:g} min"
    return ""
