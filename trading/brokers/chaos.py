"""A broker that fails on purpose: the faults a live broker shows, on any broker.

``ChaosBroker`` wraps a broker (the paper broker in tests and benchmarks) and
makes a share of its order calls (place, modify, cancel) fail the ways Dhan
does: a reject for a stale price, a throttle, an unknown outcome (the order
may or may not have reached the exchange), a 5xx. It records the time of
every order call that reached it, so a test or a benchmark can count the
orders in any one-second window. Chosen at start-up like any broker; nothing
else knows it is there.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from decimal import Decimal

from trading.brokers.base import Broker, BrokerOrder, PlaceRequest, Rejected, Throttled, Unavailable, Unknown

FAULTS = ("stale_price", "throttle", "unknown_placed", "unknown_lost", "unavailable")


class ChaosBroker(Broker):
    def __init__(
        self,
        inner: Broker,
        *,
        fault_rate: float = 0.2,
        seed: int = 11,
        faults: tuple[str, ...] = FAULTS,
        clock: Callable[[], float] = time.monotonic,
        only: set[str] | None = None,
    ):
        self.inner = inner
        self.name = inner.name
        self.fault_rate = fault_rate
        self.faults = faults
        self._rng = random.Random(seed)  # noqa: S311 (a simulation, not security)
        self._clock = clock
        self.calls: list[tuple[float, str]] = []  # (monotonic time, kind) of every order call
        self.injected: dict[str, int] = dict.fromkeys(FAULTS, 0)
        self.only = only  # security ids whose orders fail (None: all)
        self._sids: dict[str, str] = {}  # broker order id → security id

    def __getattr__(self, name):  # book, clock, account of the wrapped broker
        return getattr(self.inner, name)

    def _fault(self, security_id: str | None = None) -> str | None:
        if self.only is not None and security_id not in self.only:
            return None
        if self._rng.random() >= self.fault_rate:
            return None
        fault = self._rng.choice(self.faults)
        self.injected[fault] += 1
        return fault

    def max_in_window(self, window_s: float = 1.0) -> int:
        """The most order calls in any interval of ``window_s`` (closed at both ends)."""
        times = sorted(t for t, _ in self.calls)
        best, start = 0, 0
        for end, at in enumerate(times):
            while at - times[start] > window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    async def _security_of(self, broker_order_id: str) -> str | None:
        if self.only is None:
            return None
        try:
            return (await self.inner.get_order(broker_order_id)).security_id
        except Exception:
            return None

    async def place_order(self, request: PlaceRequest) -> BrokerOrder:
        self.calls.append((self._clock(), "place"))
        fault = self._fault(request.security_id)
        if fault == "stale_price":
            raise Rejected("DH-906", f"Price {request.price} is outside the price band: the market moved")
        if fault == "throttle":
            raise Throttled("Too many requests", retry_after=0.2)
        if fault == "unavailable":
            raise Unavailable("HTTP 503 from the broker")
        if fault == "unknown_placed":
            await self.inner.place_order(request)  # it reached the exchange; the reply was lost
            raise Unknown("connection reset after sending")
        if fault == "unknown_lost":
            raise Unknown("connection reset before the broker read it")
        return await self.inner.place_order(request)

    async def modify_order(
        self, broker_order_id: str, *, price: Decimal | None = None, quantity: int | None = None
    ) -> BrokerOrder:
        self.calls.append((self._clock(), "modify"))
        fault = self._fault(await self._security_of(broker_order_id))
        if fault in ("stale_price", "unknown_lost", "unknown_placed"):
            raise Rejected("DH-906", "Modification refused: the order changed at the exchange")
        if fault == "throttle":
            raise Throttled("Too many requests", retry_after=0.2)
        if fault == "unavailable":
            raise Unavailable("HTTP 502 from the broker")
        return await self.inner.modify_order(broker_order_id, price=price, quantity=quantity)

    async def cancel_order(self, broker_order_id: str) -> BrokerOrder:
        self.calls.append((self._clock(), "cancel"))
        if self._fault(await self._security_of(broker_order_id)) is not None:
            raise Unavailable("HTTP 503 from the broker")
        return await self.inner.cancel_order(broker_order_id)

    async def get_order(self, broker_order_id: str) -> BrokerOrder:
        return await self.inner.get_order(broker_order_id)

    async def get_order_by_correlation(self, correlation_id: str):
        return await self.inner.get_order_by_correlation(correlation_id)

    async def order_book(self):
        return await self.inner.order_book()

    async def trade_book(self):
        return await self.inner.trade_book()

    async def positions(self):
        return await self.inner.positions()

    async def funds(self):
        return await self.inner.funds()

    async def kill_switch(self, activate: bool = True) -> bool:
        return await self.inner.kill_switch(activate)

    async def on_market_data(self) -> None:
        await self.inner.on_market_data()

    async def close(self) -> None:
        await self.inner.close()
