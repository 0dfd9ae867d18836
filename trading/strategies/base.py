"""The Strategy contract.

Lifecycle: ``configure(config)`` → ``warm_up(history)`` → ``on_snapshot(snapshot)``
returning intents → ``on_fill`` / ``on_timer`` → ``on_stop``. Strategies are
pure: no ORM, no broker, no clock of their own (times come in with the data).
Their state is a JSON-able dict so a restarted engine resumes open trades.
The engine calls them through a wrapper that contains their exceptions.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from trading.strategies.config import StrategyConfig

TICK = Decimal("0.05")


def to_tick(value: float) -> Decimal:
    """A float price from analytics onto the exchange's ₹0.05 tick, as Decimal."""
    return (Decimal(str(value)) / TICK).quantize(Decimal("1")) * TICK


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """What a strategy wants; the risk gate and the OMS decide what is sent."""

    strategy_key: str
    security_id: str
    side: str  # "BUY" | "SELL"
    lots: int
    lot_size: int
    purpose: str  # ENTRY | SCALE | HEDGE | EXIT
    limit_price: Decimal | None
    signal_key: str | None = None
    reduces_exposure: bool = False
    reason: str = ""
    snapshot_at: dt.datetime | None = None
    expected_price: Decimal | None = None  # mid or touch the strategy priced from
    features: dict[str, Any] = field(default_factory=dict)

    @property
    def quantity(self) -> int:
        return self.lots * self.lot_size


@dataclass(frozen=True, slots=True)
class FillEvent:
    strategy_key: str
    signal_key: str | None
    security_id: str
    side: str
    quantity: int
    price: Decimal
    filled_at: dt.datetime
    purpose: str
    order_complete: bool  # no more fills will come for this order


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """An order reached a terminal state without (fully) filling."""

    strategy_key: str
    signal_key: str | None
    security_id: str
    purpose: str
    state: str  # CANCELLED | REJECTED
    filled_quantity: int
    quantity: int
    reason: str


@dataclass(frozen=True, slots=True)
class ExitLevels:
    """Where a held trade will exit by its own rules, for the positions grid."""

    stop: float
    target: float
    deadline: dt.datetime


class Strategy(abc.ABC):
    key: ClassVar[str]
    config_class: ClassVar[type[StrategyConfig]]

    def __init__(self) -> None:
        self.config: StrategyConfig = self.config_class()
        self.entries_enabled = True

    def configure(self, config: StrategyConfig) -> None:
        """Apply a (new) validated config; called at start and on every admin change."""
        self.config = config

    def set_anomaly_scorers(self, scorers: dict[str, Any]) -> None:  # noqa: B027  (optional hook)
        """The live anomaly model of each underlying (``marketdata.anomaly``), verified by
        the engine; called at start and whenever an operator pins or rolls back."""

    def warm_up(self, history: Iterable[Any]) -> None:  # noqa: B027  (optional hook)
        """Feed stored snapshots so baselines are ready before trading."""

    @abc.abstractmethod
    def on_snapshot(self, snapshot: Any) -> Sequence[OrderIntent]:
        """React to an option-chain snapshot; return intents (possibly none)."""

    def on_fill(self, fill: FillEvent) -> Sequence[OrderIntent]:
        return ()

    def on_order_update(self, update: OrderUpdate) -> Sequence[OrderIntent]:
        return ()

    def on_timer(self, now: dt.datetime) -> Sequence[OrderIntent]:
        return ()

    def on_stop(self) -> None:  # noqa: B027  (optional hook)
        """Called once when the engine stops; state is persisted afterwards."""

    def exit_levels(self) -> dict[str, ExitLevels]:
        """Security id → the stop, target and time-out of each trade held (optional)."""
        return {}

    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:  # noqa: B027  (optional hook)
        """Restore what ``get_state`` returned (after a restart)."""
