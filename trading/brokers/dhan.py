"""The live broker: Dhan, through Dhan-Tradehull 3.x and its dhanhq client.

What their source shows, and how it is contained here:

* ``import Dhan_Tradehull`` prints to stdout, and its constructor logs in over
  the network, downloads the scrip master into ``./Dependencies``, calls
  ``logging.basicConfig`` and prints. It is imported lazily, constructed in
  ``var/dhan`` (cwd switched under a lock and restored), its stdout/stderr
  captured into our log, and the root logger's handlers and levels restored.
* Its helpers swallow exceptions (returning None, 0 or {}) and several sleep
  0.4–1 s inside. Latency-critical calls (place, modify, cancel, order list,
  order by correlation id, trades, positions, funds, kill switch) therefore go
  straight to its ``dhanhq`` client, whose HTTP timeout is lowered from 60 s
  to DHAN_HTTP_TIMEOUT_S.
* dhanhq returns ``{"status": "failure", "remarks": …}``: a dict with
  ``error_code`` is a real answer from Dhan (→ Rejected, or AuthExpired /
  Throttled for DH-901/DH-904); a plain string is a timeout, a reset or an
  unparsable reply (→ Unknown for calls that change orders, Unavailable for
  reads).
* Every order carries our client order id as ``correlationId``, so an Unknown
  is resolved by ``GET /orders/external/{correlationId}``, never by resending.
* Calls run in a thread pool with per-call timeouts; the engine loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings

from quanthub.clock import IST
from trading.brokers.base import (
    AuthExpired,
    Broker,
    BrokerOrder,
    BrokerPosition,
    BrokerStatus,
    BrokerTrade,
    Funds,
    OrderType,
    PlaceRequest,
    Rejected,
    Side,
    Throttled,
    Unavailable,
    Unknown,
)

log = logging.getLogger(__name__)
AUTH_CODES = {"DH-901"}
THROTTLE_CODES = {"DH-904"}
# Server-side failures where Dhan may or may not have acted.
AMBIGUOUS_CODES = {"DH-908", "DH-909"}
_CWD_LOCK = threading.Lock()


def contained_tradehull(client_id: str, token: str, data_dir: Path | None = None):
    """Construct Dhan-Tradehull without letting it take over the process."""
    data_dir = Path(data_dir or Path(settings.VAR_DIR) / "dhan")
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in ("requests", "urllib3")}
    captured = io.StringIO()
    with _CWD_LOCK:
        previous = os.getcwd()
        try:
            os.chdir(data_dir)
            with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
                from Dhan_Tradehull import Tradehull

                tradehull = Tradehull(client_id, token, mode="access_token")
        finally:
            os.chdir(previous)
            for handler in list(root.handlers):
                if handler not in saved_handlers:
                    root.removeHandler(handler)
                    handler.close()
            root.setLevel(saved_level)
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)
    for line in captured.getvalue().splitlines():
        if line.strip():
            log.info("dhan-tradehull says", extra={"line": line.strip()[:300]})
    if getattr(tradehull, "Dhan", None) is None:
        raise AuthExpired("Dhan-Tradehull could not log in (see the log for what it said)")
    return tradehull


def _decimal(value: Any) -> Decimal | None:
    if value in (None, ""):
        return None
    return Decimal(str(value)).quantize(Decimal("0.01"))


def _time(value: Any) -> dt.datetime | None:
    if not value or value in ("NA", "0001-01-01 00:00:00"):
        return None
    try:
        return dt.datetime.fromisoformat(str(value)).replace(tzinfo=IST)
    except ValueError:
        return None


def parse_order(data: dict) -> BrokerOrder:
    status = str(data.get("orderStatus", "PENDING")).upper()
    if status not in BrokerStatus.__members__:
        status = "PENDING"
    order_type = str(data.get("orderType", "LIMIT")).upper()
    return BrokerOrder(
        broker_order_id=str(data.get("orderId", "")),
        correlation_id=str(data.get("correlationId") or ""),
        security_id=str(data.get("securityId", "")),
        exchange_segment=str(data.get("exchangeSegment", "")),
        side=Side(str(data.get("transactionType", "BUY")).upper()),
        order_type=OrderType(order_type) if order_type in ("LIMIT", "MARKET") else OrderType.LIMIT,
        quantity=int(data.get("quantity") or 0),
        price=_decimal(data.get("price")),
        status=BrokerStatus(status),
        filled_quantity=int(data.get("filledQty") or data.get("filled_qty") or 0),
        average_price=_decimal(data.get("averageTradedPrice")),
        reject_code=str(data.get("omsErrorCode") or ""),
        reason=str(data.get("omsErrorDescription") or ""),
        updated_at=_time(data.get("updateTime")),
    )


class DhanBroker(Broker):
    name = "dhan"

    def __init__(self, *, client, account: str = "default", timeout_s: float = 3.0, workers: int = 4):
        self.client = client
        self.account = account
        self.timeout_s = timeout_s
        # The SDK's default HTTP timeout is 60 s: far too long for a trading loop.
        client.dhan_http.timeout = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dhan")

    @classmethod
    def from_options(cls, *, account="default", clock=None, book=None, tradehull=None, **options) -> DhanBroker:
        from trading.brokers.tokens import current_token, refresh

        token = current_token()
        if not token and settings.DHAN_TOTP_SECRET and settings.DHAN_PIN:
            token = refresh().token  # log in by PIN + TOTP; the token goes to the token file, not a log
        if not settings.DHAN_CLIENT_ID or not token:
            raise AuthExpired("Dhan needs DHAN_CLIENT_ID and an access token (or run refresh_dhan_token)")
        tradehull = tradehull or contained_tradehull(settings.DHAN_CLIENT_ID, token)
        return cls(client=tradehull.Dhan, account=account, timeout_s=settings.DHAN_HTTP_TIMEOUT_S)

    async def _call(self, fn, *args, writes: bool = False, **kwargs) -> Any:
        loop = asyncio.get_running_loop()
        try:
            # A little longer than the HTTP timeout, so the SDK's own timeout reports first.
            response = await asyncio.wait_for(
                loop.run_in_executor(self._pool, partial(fn, *args, **kwargs)), timeout=self.timeout_s + 1.0
            )
        except TimeoutError:
            raise (Unknown if writes else Unavailable)(f"{fn.__name__} timed out") from None
        return self._check(response, writes=writes, call=fn.__name__)

    @staticmethod
    def _check(response: Any, *, writes: bool, call: str) -> Any:
        if not isinstance(response, dict):
            raise (Unknown if writes else Unavailable)(f"{call}: unexpected reply {type(response).__name__}")
        if response.get("status") == "success":
            return response.get("data")
        remarks = response.get("remarks")
        if isinstance(remarks, dict) and remarks.get("error_code"):
            code = str(remarks.get("error_code"))
            message = str(remarks.get("error_message") or remarks.get("error_type") or "")
            if code in AUTH_CODES:
                raise AuthExpired(f"{code}: {message}")
            if code in THROTTLE_CODES:
                raise Throttled(f"{code}: {message}")
            if code in AMBIGUOUS_CODES:
                raise (Unknown if writes else Unavailable)(f"{call}: {code} {message}")
            raise Rejected(code, message)
        # A string: a timeout, a connection reset, or a reply that was not JSON.
        raise (Unknown if writes else Unavailable)(f"{call}: {remarks}")

    async def place_order(self, request: PlaceRequest) -> BrokerOrder:
        price = float(request.price) if request.price is not None and request.order_type == OrderType.LIMIT else 0
        data = await self._call(
            self.client.place_order,
            request.security_id,
            request.exchange_segment,
            str(request.side),
            request.quantity,
            str(request.order_type),
            request.product,
            price,
            tag=request.correlation_id,
            validity=request.validity,
            writes=True,
        )
        if not isinstance(data, dict) or not data.get("orderId"):
            raise Unknown(f"place_order answered without an order id: {data!r}"[:300])
        status = str(data.get("orderStatus", "TRANSIT")).upper()
        return BrokerOrder(
            broker_order_id=str(data["orderId"]),
            correlation_id=request.correlation_id,
            security_id=request.security_id,
            exchange_segment=request.exchange_segment,
            side=request.side,
            order_type=request.order_type,
            quantity=request.quantity,
            price=request.price,
            status=BrokerStatus(status) if status in BrokerStatus.__members__ else BrokerStatus.TRANSIT,
        )

    async def modify_order(
        self, broker_order_id: str, *, price: Decimal | None = None, quantity: int | None = None
    ) -> BrokerOrder:
        current = await self.get_order(broker_order_id)
        await self._call(
            self.client.modify_order,
            broker_order_id,
            str(current.order_type),
            "ENTRY_LEG",
            quantity or current.quantity,
            float(price if price is not None else current.price or 0),
            0,
            0,
            "DAY",
            writes=True,
        )
        return await self.get_order(broker_order_id)

    async def cancel_order(self, broker_order_id: str) -> BrokerOrder:
        await self._call(self.client.cancel_order, broker_order_id, writes=True)
        return await self.get_order(broker_order_id)

    async def get_order(self, broker_order_id: str) -> BrokerOrder:
        data = await self._call(self.client.get_order_by_id, broker_order_id)
        data = data[0] if isinstance(data, list) and data else data
        return parse_order(data)

    async def get_order_by_correlation(self, correlation_id: str) -> BrokerOrder | None:
        try:
            data = await self._call(self.client.get_order_by_correlationID, correlation_id)
        except Rejected as exc:
            if exc.code in ("DH-906", "DH-907", "DH-905"):  # "no such order"
                return None
            raise
        if not data:
            return None
        data = data[0] if isinstance(data, list) else data
        return parse_order(data) if data.get("orderId") else None

    async def order_book(self) -> list[BrokerOrder]:
        data = await self._call(self.client.get_order_list)
        return [parse_order(item) for item in data or []]

    async def trade_book(self) -> list[BrokerTrade]:
        # Dhan's trades carry no correlation id: join them to the order book.
        orders = {o.broker_order_id: o for o in await self.order_book()}
        data = await self._call(self.client.get_trade_book)
        trades = []
        for item in data or []:
            order_id = str(item.get("orderId", ""))
            trades.append(
                BrokerTrade(
                    trade_id=str(item.get("exchangeTradeId") or f"{order_id}-{item.get('exchangeTime')}"),
                    broker_order_id=order_id,
                    correlation_id=orders[order_id].correlation_id if order_id in orders else "",
                    security_id=str(item.get("securityId", "")),
                    exchange_segment=str(item.get("exchangeSegment", "")),
                    side=Side(str(item.get("transactionType", "BUY")).upper()),
                    quantity=int(item.get("tradedQuantity", 0)),
                    price=_decimal(item.get("tradedPrice")) or Decimal("0"),
                    traded_at=_time(item.get("exchangeTime"))
                    or _time(item.get("createTime"))
                    or dt.datetime.now(tz=IST),
                )
            )
        return trades

    async def positions(self) -> list[BrokerPosition]:
        data = await self._call(self.client.get_positions)
        if data is None or not isinstance(data, list):
            raise Unavailable("Dhan returned no position report")  # never read as flat
        return [
            BrokerPosition(
                str(p.get("securityId")),
                str(p.get("exchangeSegment", "")),
                int(p.get("netQty", 0)),
                _decimal(p.get("costPrice") or p.get("buyAvg")) or Decimal("0"),
                _decimal(p.get("realizedProfit")) or Decimal("0"),
            )
            for p in data
            if int(p.get("netQty", 0)) != 0
        ]

    async def funds(self) -> Funds:
        data = await self._call(self.client.get_fund_limits)
        available = _decimal(data.get("availabelBalance", data.get("availableBalance"))) or Decimal("0")
        utilised = _decimal(data.get("utilizedAmount")) or Decimal("0")
        return Funds(available=available, utilised=utilised, total=_decimal(data.get("sodLimit")) or Decimal("0"))

    async def kill_switch(self, activate: bool = True) -> bool:
        await self._call(self.client.kill_switch, "ACTIVATE" if activate else "DEACTIVATE", writes=True)
        return activate

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
