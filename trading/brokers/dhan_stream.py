"""Dhan's Live Order Update stream, fed into the order manager.

Each ``order_alert`` becomes a ``BrokerOrder`` and goes through the order
manager's ``apply_broker_update`` — the same conditional updates ``sync``
applies to what it polls. Dhan's update carries the cumulative traded
quantity but no trade id; when it grows, the order's trades are read from
``GET /trades/{order-id}``, so every fill is recorded under its exchange trade
id, the id the REST safety net uses too: a fill counts once whichever path
sees it first, and a duplicate message changes nothing. Updates that repeat
one already applied (same order, status and traded quantity) are dropped
before any database work.

While the stream is healthy the engine's REST sync runs at a slower cadence;
when it is not, REST takes over at once (``push_healthy``). A refused stream
(bad or expired token) raises one alert per cause and reconnects with the
token the next renewal brings.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from decimal import Decimal

from django.conf import settings

from audit import actors
from audit.chain import append as audit_append
from quanthub.clock import IST
from quanthub.dhan.streams import OrderUpdateStream
from quanthub.dhan.tokens import current_token, on_renewal
from quanthub.sql import on_db_thread as _db
from trading.brokers.base import BrokerError, BrokerOrder, BrokerStatus, OrderType, Side

log = logging.getLogger(__name__)
SEGMENTS = {("NSE", "D"): "NSE_FNO", ("NSE", "I"): "IDX_I", ("NSE", "E"): "NSE_EQ", ("BSE", "D"): "BSE_FNO"}
STATUSES = {
    "TRANSIT": BrokerStatus.TRANSIT,
    "PENDING": BrokerStatus.PENDING,
    "PART_TRADED": BrokerStatus.PART_TRADED,
    "PARTIALLY_TRADED": BrokerStatus.PART_TRADED,
    "TRADED": BrokerStatus.TRADED,
    "CANCELLED": BrokerStatus.CANCELLED,
    "REJECTED": BrokerStatus.REJECTED,
    "EXPIRED": BrokerStatus.EXPIRED,
}
TERMINAL = (BrokerStatus.TRADED, BrokerStatus.CANCELLED, BrokerStatus.REJECTED, BrokerStatus.EXPIRED)


def _decimal(value) -> Decimal | None:
    if value in (None, "", 0, 0.0):
        return None
    return Decimal(str(value)).quantize(Decimal("0.01"))


def order_from_update(data: dict) -> BrokerOrder:
    """A Live Order Update's ``Data`` as our ``BrokerOrder``."""
    status = STATUSES.get(str(data.get("Status", "")).upper().replace(" ", "_"), BrokerStatus.PENDING)
    segment = SEGMENTS.get((str(data.get("Exchange", "NSE")).upper(), str(data.get("Segment", "D")).upper()), "NSE_FNO")
    side = Side.SELL if str(data.get("TxnType", "B")).upper().startswith("S") else Side.BUY
    order_type = OrderType.MARKET if str(data.get("OrderType", "LMT")).upper().startswith("MKT") else OrderType.LIMIT
    updated = None
    with contextlib.suppress(ValueError, TypeError):
        updated = dt.datetime.fromisoformat(str(data.get("LastUpdatedTime"))).replace(tzinfo=IST)
    rejected = status == BrokerStatus.REJECTED
    return BrokerOrder(
        broker_order_id=str(data.get("OrderNo") or ""),
        correlation_id=str(data.get("CorrelationId") or ""),
        security_id=str(data.get("SecurityId") or ""),
        exchange_segment=segment,
        side=side,
        order_type=order_type,
        quantity=int(data.get("Quantity") or 0),
        price=_decimal(data.get("Price")),
        status=status,
        filled_quantity=int(data.get("TradedQty") or 0),
        average_price=_decimal(data.get("AvgTradedPrice")),
        reject_code=str(data.get("ErrorCode") or data.get("OmsErrorCode") or ("REJECTED" if rejected else "")),
        reason=str(data.get("ReasonDescription") or data.get("Remarks") or "") if rejected else "",
        updated_at=updated,
    )


class OrderStreamBridge:
    def __init__(self, broker, oms, stream: OrderUpdateStream | None = None, *, fill_retry_s: float = 0.2):
        self.broker = broker
        self.oms = oms
        self.fill_retry_s = fill_retry_s
        self.stream = stream
        self.applied = 0
        self.duplicates = 0
        self.foreign = 0
        self._seen: set[tuple[str, str, int]] = set()
        self._filled: dict[str, int] = {}  # broker order id -> traded quantity recorded from the stream
        self._first_seen: dict[str, float] = {}
        self._retries: set[asyncio.Task] = set()
        self._alerted: set[str] = set()
        self._unsubscribe = None

    @classmethod
    def for_broker(cls, broker, oms) -> OrderStreamBridge:
        bridge = cls(broker, oms)
        bridge.stream = OrderUpdateStream(
            settings.DHAN_ORDER_UPDATE_URL,
            client_id=settings.DHAN_CLIENT_ID,
            token_provider=current_token,
            silence_s=float(settings.DHAN_STREAM_SILENCE_S),
            on_update=bridge.handle,
            on_state=bridge.on_state,
        )
        return bridge

    @property
    def healthy(self) -> bool:
        return self.stream is not None and self.stream.healthy

    async def start(self) -> None:
        self.stream.start()
        self._unsubscribe = on_renewal(self._renewed)

    def _renewed(self, token: str) -> None:
        # A renewal in this process: the new token is read at the reconnect.
        self.broker.client.dhan_http.set_token(token)
        self.stream.token_renewed()

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in list(self._retries):
            task.cancel()
        if self.stream is not None:
            await self.stream.stop()

    def on_state(self, state: str, detail: str) -> None:
        if state == "refused" and detail not in self._alerted:
            self._alerted.add(detail)
            asyncio.get_running_loop().create_task(self._alert(detail))
        elif state == "connected":
            # A renewal written by another process (Celery beat) reaches the REST calls here too.
            if self.stream.token:
                self.broker.client.dhan_http.set_token(self.stream.token)
            log.info("dhan order updates connected", extra={"connects": self.stream.connects})

    async def _alert(self, detail: str) -> None:
        from trading.alerts import raise_alert

        with contextlib.suppress(Exception):  # an alert sink's failure never reaches the stream
            await _db(raise_alert)(
                "WARNING",
                "broker",
                "Dhan order updates refused",
                f"{detail}; REST sync keeps the books until the stream is back",
                account=self.oms.account,
            )

    async def handle(self, data: dict) -> None:
        remote = order_from_update(data)
        key = (remote.broker_order_id, str(remote.status), remote.filled_quantity)
        if key in self._seen:
            self.duplicates += 1
            return
        self._seen.add(key)
        self._first_seen.setdefault(remote.broker_order_id, time.monotonic())
        trades = await self._trades(remote)
        if remote.status == BrokerStatus.REJECTED and remote.reject_code == "REJECTED":
            remote = await self._with_reject_code(remote)
        if not await self.oms.apply_broker_update(remote, trades):
            self.foreign += 1  # an order placed elsewhere (the web, the app): reconciliation sees it
            return
        self.applied += 1
        recorded = sum(t.quantity for t in trades)
        if remote.filled_quantity > recorded and remote.filled_quantity > self._filled.get(remote.broker_order_id, 0):
            self._retry(remote)  # Dhan's trade book lags its order update: look again shortly
        else:
            self._filled[remote.broker_order_id] = max(self._filled.get(remote.broker_order_id, 0), recorded)
        if remote.status in TERMINAL:
            # Off the fill's path: the position is committed already.
            task = asyncio.get_running_loop().create_task(_db(self._audit_latency)(remote))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _with_reject_code(self, remote: BrokerOrder) -> BrokerOrder:
        """The update names the reason but not Dhan's code: the order itself has both."""
        try:
            order = await self.broker.get_order(remote.broker_order_id)
        except BrokerError:
            return remote
        if not order.reject_code:
            return remote
        return dataclasses.replace(remote, reject_code=order.reject_code, reason=order.reason or remote.reason)

    async def _trades(self, remote: BrokerOrder) -> list:
        if remote.filled_quantity <= 0:
            return []
        try:
            return await self.broker.trades_for(remote.broker_order_id, remote.correlation_id)
        except BrokerError as exc:
            log.warning(
                "trades for a pushed fill unavailable",
                extra={"broker_order_id": remote.broker_order_id, "error": type(exc).__name__},
            )
            return []

    def _retry(self, remote: BrokerOrder) -> None:
        async def again():
            for _ in range(3):
                await asyncio.sleep(self.fill_retry_s)
                trades = await self._trades(remote)
                await self.oms.apply_broker_update(remote, trades)
                if sum(t.quantity for t in trades) >= remote.filled_quantity:
                    self._filled[remote.broker_order_id] = remote.filled_quantity
                    return

        task = asyncio.get_running_loop().create_task(again())
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    def _audit_latency(self, remote: BrokerOrder) -> None:
        """The stream's time for this order: from our send to its final update, in the audit chain."""
        from trading.models import Order

        order = (
            Order.objects.filter(account=self.oms.account, client_order_id=remote.correlation_id)
            .values("client_order_id", "sent_at", "acked_at", "first_fill_at")
            .first()
        )
        if order is None:
            return
        now = self.oms.clock.now()

        def ms(at):
            return round((at - order["sent_at"]).total_seconds() * 1000, 3) if at and order["sent_at"] else None

        audit_append(
            "order.stream_latency",
            actor=actors.component(),
            subject=f"order:{order['client_order_id']}",
            payload={
                "broker": "dhan",
                "status": str(remote.status),
                "ack_ms": ms(order["acked_at"]),
                "first_fill_ms": ms(order["first_fill_at"]),
                "final_update_ms": ms(now),
            },
            at=now,
        )
