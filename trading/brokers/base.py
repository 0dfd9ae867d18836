"""The one broker interface. Paper and Dhan implement it; nothing else in the
code base knows which one is running.

Errors are split by what the caller must do next:

* ``Rejected`` — the broker refused (code and message); the order does not exist.
* ``Unknown`` — timeout, connection reset, unparsable reply: the order may or
  may not exist. Resolve by ``get_order_by_correlation``; never resend.
* ``Throttled`` — rate limited; nothing was done; retry after a pause.
* ``AuthExpired`` — the token is no longer valid; refresh, then look up.
* ``Unavailable`` — the broker (or a report, e.g. positions) cannot be had now.
"""

from __future__ import annotations

import abc
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum


class BrokerError(Exception):
    """Base of every broker error."""


class Rejected(BrokerError):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Unknown(BrokerError):
    """The outcome of the call is not known; the order may exist."""


class Throttled(BrokerError):
    """``retry_after``: seconds the broker asked us to wait (its Retry-After), else a default."""

    def __init__(self, message: str = "rate limited", retry_after: float = 1.0, code: str = ""):
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class AuthExpired(BrokerError):
    pass


class Unavailable(BrokerError):
    pass


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(StrEnum):
    LIMIT = "LIMIT"
    MARKET = "MARKET"


class BrokerStatus(StrEnum):
    """Dhan's order statuses (v2)."""

    TRANSIT = "TRANSIT"
    PENDING = "PENDING"
    PART_TRADED = "PART_TRADED"
    TRADED = "TRADED"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class PlaceRequest:
    correlation_id: str  # our client order id; Dhan's correlationId
    security_id: str
    exchange_segment: str  # NSE_FNO, IDX_I …
    side: Side
    quantity: int
    order_type: OrderType
    price: Decimal | None = None  # required for LIMIT
    product: str = "INTRADAY"
    validity: str = "DAY"
    priority: bool = False  # exits and Kill All use the limiter's priority lane


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    broker_order_id: str
    correlation_id: str
    security_id: str
    exchange_segment: str
    side: Side
    order_type: OrderType
    quantity: int
    price: Decimal | None
    status: BrokerStatus
    filled_quantity: int = 0
    average_price: Decimal | None = None
    reject_code: str = ""
    reason: str = ""
    updated_at: dt.datetime | None = None

    @property
    def is_open(self) -> bool:
        return self.status in (BrokerStatus.TRANSIT, BrokerStatus.PENDING, BrokerStatus.PART_TRADED)


@dataclass(frozen=True, slots=True)
class BrokerTrade:
    trade_id: str
    broker_order_id: str
    correlation_id: str
    security_id: str
    exchange_segment: str
    side: Side
    quantity: int
    price: Decimal
    traded_at: dt.datetime


@dataclass(frozen=True, slots=True)
class BrokerPosition:
    security_id: str
    exchange_segment: str
    net_quantity: int
    average_price: Decimal
    realised_pnl: Decimal = Decimal("0")


@dataclass(frozen=True, slots=True)
class MarginLeg:
    """One leg of a basket whose margin the broker is asked for."""

    security_id: str
    exchange_segment: str
    side: Side
    quantity: int
    price: Decimal
    product: str = "INTRADAY"


@dataclass(frozen=True, slots=True)
class BasketMargin:
    total: Decimal  # what the whole basket blocks, hedge benefit included
    span: Decimal = Decimal("0")
    exposure: Decimal = Decimal("0")
    hedge_benefit: Decimal = Decimal("0")
    source: str = "broker"  # "broker" (its calculator) or "model" (our estimate)


@dataclass(frozen=True, slots=True)
class PnlExit:
    """The broker-side exit: flatten the account when the day's loss reaches ``loss``."""

    active: bool
    loss: Decimal | None = None
    profit: Decimal | None = None
    kill_switch: bool = False
    products: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Funds:
    available: Decimal  # free to use for new orders
    utilised: Decimal  # margin in use
    total: Decimal = field(default=Decimal("0"))

    @property
    def utilisation_pct(self) -> Decimal:
        base = self.available + self.utilised
        return Decimal("0") if base <= 0 else (self.utilised * 100 / base)


class Broker(abc.ABC):
    name: str = "broker"
    # The tables (``app.Model``) that hold this broker's order, trade and position books,
    # when they are tables of this database (the paper broker); None for a broker whose
    # books are elsewhere (Dhan): reconciliation then always asks it.
    book_tables: tuple[str, ...] | None = None

    @abc.abstractmethod
    async def place_order(self, request: PlaceRequest) -> BrokerOrder:
        """Send a new order; returns the broker's acknowledgement."""

    @abc.abstractmethod
    async def modify_order(
        self, broker_order_id: str, *, price: Decimal | None = None, quantity: int | None = None
    ) -> BrokerOrder: ...

    @abc.abstractmethod
    async def cancel_order(self, broker_order_id: str) -> BrokerOrder: ...

    @abc.abstractmethod
    async def get_order(self, broker_order_id: str) -> BrokerOrder: ...

    @abc.abstractmethod
    async def get_order_by_correlation(self, correlation_id: str) -> BrokerOrder | None:
        """The order sent with this correlation id, or None if the broker has none."""

    @abc.abstractmethod
    async def order_book(self) -> list[BrokerOrder]: ...

    @abc.abstractmethod
    async def trade_book(self) -> list[BrokerTrade]: ...

    @abc.abstractmethod
    async def positions(self) -> list[BrokerPosition]:
        """Open positions; raises Unavailable when the broker gives no report (never 'flat')."""

    @abc.abstractmethod
    async def funds(self) -> Funds: ...

    @abc.abstractmethod
    async def kill_switch(self, activate: bool = True) -> bool:
        """Dhan's account kill switch; accepted only with no positions and no pending orders."""

    async def renew_session(self) -> bool:
        """After ``AuthExpired``: get a fresh token and use it from the next call on,
        without a restart. True when renewed; the default has nothing to renew."""
        return False

    async def kill_switch_status(self) -> bool | None:
        """Whether the broker's kill switch is on; None where the broker has no such report."""
        return None

    async def basket_margin(self, legs: list[MarginLeg]) -> BasketMargin | None:
        """The broker's margin for the whole basket; None: the caller uses its own model.
        Raises Unavailable when the broker offers a calculator that cannot answer now."""
        return None

    async def set_pnl_exit(self, *, loss: Decimal, profit: Decimal | None = None) -> PnlExit | None:
        """Ask the broker to flatten the account at this day's loss; None where it cannot."""
        return None

    async def pnl_exit(self) -> PnlExit | None:
        """The broker-side P&L exit as the broker reports it; None where there is none to read."""
        return None

    @property
    def push_healthy(self) -> bool:
        """True while order updates arrive by push: REST sync then runs at a slower cadence."""
        return False

    async def start(self, oms) -> None:  # noqa: B027  (optional hook)
        """Called once the engine's order manager exists: a live broker starts its push streams here."""

    async def on_market_data(self) -> None:  # noqa: B027  (optional hook)
        """Called after each book update; a simulated exchange matches resting orders here."""

    async def close(self) -> None:  # noqa: B027  (optional hook)
        """Release threads and connections."""
