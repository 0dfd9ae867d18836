"""The Strategy contract.

Lifecycle: ``configure(config)`` → ``warm_up(history)`` → ``on_snapshot(snapshot)``
returning intents → ``on_fill`` / ``on_timer`` → ``on_stop``. Strategies are
pure: no ORM, no broker, no clock of their own (times come in with the data).
Their per-signal trading state (what is held, hedged, pending, the phase) is
rebuilt from the order book by ``rebuild_from_book`` on start, on takeover and
after every repair, because orders and fills are the truth; the saved state
(``get_state``) carries only what orders cannot (timers, baselines, features).
The engine calls them through a wrapper that contains their exceptions.
"""

from __future__ import annotations

import abc
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

from marketdata import ticks
from trading.strategies.config import StrategyConfig

PAISA = Decimal("0.01")


def to_tick(value: float, tick: Decimal | None = None) -> Decimal:
    """A float price from analytics as an exact Decimal: on ``tick`` when the strategy
    knows the instrument's tick, else to the paisa. The order manager puts every
    price onto the instrument's own tick from the master before it is sent
    (``marketdata.ticks``), so a strategy needs no tick size of its own."""
    if tick is not None:
        return ticks.to_tick(value, tick)
    return Decimal(str(value)).quantize(PAISA)


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
class BookOrder:
    """One of the strategy's orders today as the books hold it (after repairs)."""

    signal_key: str | None
    security_id: str
    underlying: str
    kind: str  # CE | PE | FUT
    side: str
    purpose: str  # ENTRY | SCALE | HEDGE | EXIT | KILL
    state: str  # NEW … UNKNOWN (trading.models.Order.State)
    quantity: int
    filled_quantity: int
    average_price: Decimal | None
    created_at: dt.datetime | None
    first_fill_at: dt.datetime | None
    reason: str = ""

    @property
    def live(self) -> bool:
        """The broker may still fill (part of) it."""
        return self.state in ("NEW", "SUBMITTING", "OPEN", "PARTIAL", "UNKNOWN")

    @property
    def signed_fill(self) -> int:
        return self.filled_quantity if self.side == "BUY" else -self.filled_quantity


@dataclass(frozen=True, slots=True)
class ExitLevels:
    """Where a held trade will exit by its own rules, for the positions grid."""

    stop: Decimal | float
    target: Decimal | float
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

    def on_quotes(self, quotes: Any) -> Sequence[OrderIntent]:
        """React to the one-second quotes of the candidate contracts (optional)."""
        return ()

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

    def rebuild_from_book(self, orders: Sequence[BookOrder]) -> Sequence[OrderIntent]:
        """Rebuild per-signal state from today's orders and fills (the truth), in
        creation order; return intents to put right what the book shows (e.g. a
        hedge left over from a flat signal). Default: the strategy keeps no such state."""
        return ()

    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:  # noqa: B027  (optional hook)
        """Restore what ``get_state`` returned (after a restart)."""
