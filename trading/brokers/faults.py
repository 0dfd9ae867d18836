"""A broker that fails on purpose: the outside world's failures, injected at set
rates around a real broker, for the fault benchmark and storm tests.

``QUANTHUB_BROKER_FAULTS="throttle=0.05,throttle_after=0.05,unknown_after=0.03,books=0.02"``
wraps the paper broker (never a live one):

* ``throttle`` — a send refused with a throttle (nothing was done);
* ``throttle_after`` — the broker took the order, but the reply is a throttle
  (the worst case: a blind resend would send it twice);
* ``unknown_after`` — the broker took the order; the reply is a 502;
* ``books`` — an order book, trade book, positions or funds read fails (503).

Every send for a correlation id the broker already has is written to
``QUANTHUB_BROKER_FAULTS_LOG`` (one line each): the fault benchmark counts
them as orders sent twice.
"""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

from trading.brokers.base import (
    Broker,
    BrokerOrder,
    BrokerPosition,
    BrokerTrade,
    Funds,
    PlaceRequest,
    Throttled,
    Unavailable,
    Unknown,
)

KNOWN = ("throttle", "throttle_after", "unknown_after", "books")


def parse_rates(spec: str) -> dict[str, float]:
    rates = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in KNOWN:
            raise ValueError(f"Unknown broker fault {name!r}; known: {', '.join(KNOWN)}")
        rates[name] = float(value)
    return rates


class FaultyBroker(Broker):
    def __init__(self, inner: Broker, rates: dict[str, float], *, seed: int = 7, log_path: str = ""):
        self.inner = inner
        self.name = inner.name
        self.rates = rates
        self._rng = random.Random(seed)  # noqa: S311 (a simulation, not security)
        self.log_path = Path(log_path) if log_path else None
        self.sent_twice = 0

    def _roll(self, name: str) -> bool:
        return self._rng.random() < self.rates.get(name, 0.0)

    async def _note_resend(self, request: PlaceRequest) -> None:
        if await self.inner.get_order_by_correlation(request.correlation_id) is None:
            return
        self.sent_twice += 1
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a") as out:
                out.write(f"{request.correlation_id}\n")

    async def place_order(self, request: PlaceRequest) -> BrokerOrder:
        await self._note_resend(request)
        if self._roll("throttle"):
            raise Throttled("HTTP 429 Too Many Requests", retry_after=0.2)
        ack = await self.inner.place_order(request)
        if self._roll("throttle_after"):
            raise Throttled("DH-904: Too many requests", retry_after=0.2)
        if self._roll("unknown_after"):
            raise Unknown("HTTP 502 <html><body>Bad Gateway</body></html>")
        return ack

    async def _book(self, read):
        if self._roll("books"):
            raise Unavailable("HTTP 503 <html><body>Service Unavailable</body></html>")
        return await read()

    async def order_book(self) -> list[BrokerOrder]:
        return await self._book(self.inner.order_book)

    async def trade_book(self) -> list[BrokerTrade]:
        return await self._book(self.inner.trade_book)

    async def positions(self) -> list[BrokerPosition]:
        return await self._book(self.inner.positions)

    async def funds(self) -> Funds:
        return await self._book(self.inner.funds)

    async def modify_order(
        self, broker_order_id: str, *, price: Decimal | None = None, quantity: int | None = None
    ) -> BrokerOrder:
        return await self.inner.modify_order(broker_order_id, price=price, quantity=quantity)

    async def cancel_order(self, broker_order_id: str) -> BrokerOrder:
        return await self.inner.cancel_order(broker_order_id)

    async def get_order(self, broker_order_id: str) -> BrokerOrder:
        return await self.inner.get_order(broker_order_id)

    async def get_order_by_correlation(self, correlation_id: str) -> BrokerOrder | None:
        return await self.inner.get_order_by_correlation(correlation_id)

    async def kill_switch(self, activate: bool = True) -> bool:
        return await self.inner.kill_switch(activate)

    async def renew_session(self) -> bool:
        return await self.inner.renew_session()

    async def on_market_data(self) -> None:
        await self.inner.on_market_data()

    async def close(self) -> None:
        await self.inner.close()
