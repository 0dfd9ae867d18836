"""The live broker: Dhan, through dhanhq's client on our contained HTTP layer.

What the libraries' source shows, and how it is contained (``quanthub.dhan``):

* dhanhq waits 60 s for an HTTP answer, logs exception text, drops the HTTP
  status and ``Retry-After``: its HTTP layer is replaced by ``ContainedHTTP``
  (DHAN_HTTP_TIMEOUT_S on every call, Dhan's code and message kept).
* Dhan-Tradehull is not needed on the order path (its helpers swallow errors
  and sleep); where it is used it is constructed by ``contained_tradehull``.
* Errors are typed by what the order manager must do next: a definite
  refusal (``DH-9xx`` 4xx) is ``Rejected`` with Dhan's code and message; an
  HTTP 429 or ``DH-904`` is ``Throttled`` with its ``Retry-After``; ``DH-901``
  or ``807`` is ``AuthExpired``; a timeout, a reset, an unparsable reply or a
  ``DH-908`` is ``Unknown`` for a call that changes orders (resolved by
  ``GET /orders/external/{correlationId}``, never by resending) and
  ``Unavailable`` for a read.
* A 200 whose order status is REJECTED keeps Dhan's reject code and reason
  (read from the order when the placement answer does not carry them).
* Fills and order changes arrive by push (``trading.brokers.dhan_stream``):
  the Live Order Update websocket. REST sync stays as the slower safety net.
* Margin comes from Dhan's calculator for the whole basket (short cache);
  the Trader's Control APIs give the kill-switch status and the broker-side
  P&L exit (set, read back, stop).
* Calls run in a thread pool with per-call timeouts; the engine loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings

from quanthub.clock import IST
from quanthub.dhan.errors import (
    DhanAmbiguous,
    DhanAuthError,
    DhanDataPlan,
    DhanError,
    DhanRejected,
    DhanThrottled,
    DhanTransport,
)
from quanthub.dhan.http import error_of
from quanthub.dhan.session import contain_client, contained_tradehull, dhan_client
from quanthub.dhan.tokens import TokenRefreshError, current_token, on_renewal, refresh
from quanthub.sql import on_db_thread
from trading.brokers.base import (
    AuthExpired,
    BasketMargin,
    Broker,
    BrokerOrder,
    BrokerPosition,
    BrokerStatus,
    BrokerTrade,
    Funds,
    MarginLeg,
    OrderType,
    PlaceRequest,
    PnlExit,
    Rejected,
    Side,
    Throttled,
    Unavailable,
    Unknown,
)

log = logging.getLogger(__name__)
NOT_FOUND_CODES = ("DH-905", "DH-906", "DH-907")  # "no such order" from the lookup by correlation id

__all__ = ["DhanBroker", "contained_tradehull", "parse_order", "translate"]


def translate(error: DhanError, *, writes: bool, call: str) -> Exception:
    """Our broker error for Dhan's typed error."""
    if isinstance(error, DhanThrottled):
        return Throttled(
            str(error), retry_after=error.retry_after if error.retry_after is not None else 1.0, code=error.code
        )
    if isinstance(error, DhanAuthError):
        return AuthExpired(str(error))
    if isinstance(error, DhanDataPlan):
        return Unavailable(str(error))
    if isinstance(error, (DhanAmbiguous, DhanTransport)):
        return (Unknown if writes else Unavailable)(f"{call}: {error}")
    if isinstance(error, DhanRejected):
        return Rejected(error.code, error.message)
    return (Unknown if writes else Unavailable)(f"{call}: {error}")


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


def _status(value: Any) -> BrokerStatus:
    status = str(value or "PENDING").upper().replace(" ", "_")
    status = {"PARTIALLY_TRADED": "PART_TRADED", "PARTIAL": "PART_TRADED"}.get(status, status)
    return BrokerStatus(status) if status in BrokerStatus.__members__ else BrokerStatus.PENDING


def parse_order(data: dict) -> BrokerOrder:
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
        status=_status(data.get("orderStatus")),
        filled_quantity=int(data.get("filledQty") or data.get("filled_qty") or 0),
        average_price=_decimal(data.get("averageTradedPrice")),
        reject_code=str(data.get("omsErrorCode") or ""),
        reason=str(data.get("omsErrorDescription") or ""),
        updated_at=_time(data.get("updateTime")),
    )


def parse_trade(item: dict, correlation_id: str = "") -> BrokerTrade:
    order_id = str(item.get("orderId", ""))
    return BrokerTrade(
        trade_id=str(item.get("exchangeTradeId") or f"{order_id}-{item.get('exchangeTime')}"),
        broker_order_id=order_id,
        correlation_id=correlation_id,
        security_id=str(item.get("securityId", "")),
        exchange_segment=str(item.get("exchangeSegment", "")),
        side=Side(str(item.get("transactionType", "BUY")).upper()),
        quantity=int(item.get("tradedQuantity", 0)),
        price=_decimal(item.get("tradedPrice")) or Decimal("0"),
        traded_at=_time(item.get("exchangeTime")) or _time(item.get("createTime")) or dt.datetime.now(tz=IST),
    )


def parse_pnl_exit(data: Any) -> PnlExit:
    """``GET /pnlExit`` as Dhan v2 documents it — ``pnlExitStatus``, ``profit``,
    ``loss``, ``segments``, ``enable_kill_switch`` — not the names of the request
    that set it (``profitValue``, ``lossValue``, ``productType``,
    ``enableKillSwitch``), which are read only as a fallback."""
    if not isinstance(data, dict):
        return PnlExit(active=False)
    status = str(data.get("pnlExitStatus") or data.get("status") or "").upper()
    loss = _decimal(_first(data, "loss", "lossValue"))
    active = status in ("ACTIVE", "ENABLED", "TRUE") or (not status and loss is not None)
    products = _first(data, "segments", "productType") or []
    switch = _first(data, "enable_kill_switch", "enableKillSwitch")
    return PnlExit(
        active=active,
        loss=abs(loss) if loss is not None else None,  # a loss level, whichever sign it is reported with
        profit=_decimal(_first(data, "profit", "profitValue")),
        kill_switch=switch is True or str(switch).lower() == "true",
        products=tuple(products if isinstance(products, list) else [products]),
    )


def _first(data: dict, *names: str) -> Any:
    for name in names:
        if data.get(name) not in (None, ""):
            return data[name]
    return None


def _money(data: dict, *names: str) -> Decimal:
    for name in names:
        if name in data and data[name] not in (None, ""):
            return Decimal(str(data[name])).quantize(Decimal("0.01"))
    return Decimal("0")


class DhanBroker(Broker):
    name = "dhan"

    def __init__(
        self,
        *,
        client,
        account: str = "default",
        timeout_s: float = 3.0,
        workers: int = 4,
        margin_cache_s: float | None = None,
        streams: bool = False,
        tradehull=None,
    ):
        self.client = contain_client(client)
        # Dhan-Tradehull, when the caller drives its helpers too: its own dhanhq client
        # (contained) takes every renewed token with ours.
        self.tradehull = tradehull
        self.account = account
        self.timeout_s = timeout_s
        # The SDK's default HTTP timeout is 60 s: far too long for a trading loop.
        self.client.dhan_http.timeout = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dhan")
        self.margin_cache_s = settings.DHAN_MARGIN_CACHE_S if margin_cache_s is None else margin_cache_s
        self._margins: dict[tuple, tuple[float, BasketMargin]] = {}
        self.streams = streams
        self.bridge = None  # trading.brokers.dhan_stream.OrderStreamBridge once started
        self._renewing = asyncio.Lock()
        # A renewal anywhere in this process (the order path, the 08:50 refresh) reaches every call.
        self._unsubscribe = on_renewal(self.use_token)

    @classmethod
    def from_options(cls, *, account="default", clock=None, book=None, client=None, **options) -> DhanBroker:
        if client is None:
            token = current_token()
            if not token and settings.DHAN_TOTP_SECRET and settings.DHAN_PIN:
                token = refresh().token  # log in by PIN + TOTP; the token goes to the token file, not a log
            if not settings.DHAN_CLIENT_ID or not token:
                raise AuthExpired("Dhan needs DHAN_CLIENT_ID and an access token (or run refresh_dhan_token)")
            client = dhan_client(settings.DHAN_CLIENT_ID, token)
        return cls(client=client, account=account, timeout_s=settings.DHAN_HTTP_TIMEOUT_S, streams=True)

    # --- the session -------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self.client.dhan_http.access_token

    def use_token(self, token: str) -> None:
        """Every later call goes with ``token``: dhanhq's client, and Tradehull's."""
        if not token:
            return
        self.client.dhan_http.set_token(token)
        if self.tradehull is not None:
            self.tradehull.token_id = token
            inner = getattr(self.tradehull, "Dhan", None)
            if inner is not None and inner is not self.client:
                contain_client(inner).dhan_http.set_token(token)

    async def renew_session(self) -> bool:
        """After an expired token: a new one (renewed while valid, else PIN + TOTP), used from the next call on.

        One renewal at a time: calls that failed together wait for it and share
        its token. A token another process renewed (the 08:50 refresh) is taken
        from the token file instead of renewing again. A failed renewal raises
        the CRITICAL alert (``refresh_or_alert``) and returns False; the order
        path keeps looking orders up before any resend."""
        stale = self.token
        async with self._renewing:
            if self.token != stale:
                return True  # renewed while this caller waited
            stored = current_token()
            if stored and stored != stale:
                self.use_token(stored)
                return True
            loop = asyncio.get_running_loop()
            try:
                # The login calls time out on their own (DHAN_HTTP_TIMEOUT_S each); two of them at most.
                result = await asyncio.wait_for(
                    loop.run_in_executor(self._pool, refresh), timeout=2 * self.timeout_s + 2.0
                )
            except (TokenRefreshError, TimeoutError) as exc:
                why = str(exc) if isinstance(exc, TokenRefreshError) else "the login calls timed out"
                log.error("dhan session not renewed", extra={"reason": why})
                from trading.alerts import raise_alert  # models: the adapter imports before the apps are ready

                with contextlib.suppress(Exception):  # the database may be down too; the log says it
                    await on_db_thread(raise_alert)("CRITICAL", "token", "Dhan token refresh failed", why)
                return False
            log.info("dhan session renewed", extra={"method": result.method, "expiry": result.expiry})
            self.use_token(result.token)
            return True

    # --- the call path -------------------------------------------------------------------

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
        error = error_of(response, call)
        if error is not None:
            raise translate(error, writes=writes, call=call)
        return response.get("data")

    # --- orders --------------------------------------------------------------------------

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
        status = _status(data.get("orderStatus", "TRANSIT"))
        code = str(data.get("omsErrorCode") or data.get("errorCode") or "")
        reason = str(data.get("omsErrorDescription") or data.get("errorMessage") or "")
        if status == BrokerStatus.REJECTED and not code:
            # The placement answer says REJECTED without why: the order itself carries the reason.
            try:
                placed = await self.get_order(str(data["orderId"]))
                code, reason = placed.reject_code, placed.reason
            except (Unavailable, Rejected, AuthExpired, Throttled) as exc:
                reason = f"rejected by Dhan; the reason could not be read ({type(exc).__name__})"
            code = code or "REJECTED"
        return BrokerOrder(
            broker_order_id=str(data["orderId"]),
            correlation_id=request.correlation_id,
            security_id=request.security_id,
            exchange_segment=request.exchange_segment,
            side=request.side,
            order_type=request.order_type,
            quantity=request.quantity,
            price=request.price,
            status=status,
            reject_code=code,
            reason=reason,
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
        if not isinstance(data, dict):
            raise Unavailable(f"order {broker_order_id}: no order in the answer")
        return parse_order(data)

    async def get_order_by_correlation(self, correlation_id: str) -> BrokerOrder | None:
        try:
            data = await self._call(self.client.get_order_by_correlationID, correlation_id)
        except Rejected as exc:
            if exc.code in NOT_FOUND_CODES:
                return None
            raise
        if not data:
            return None
        data = data[0] if isinstance(data, list) else data
        return parse_order(data) if isinstance(data, dict) and data.get("orderId") else None

    async def order_book(self) -> list[BrokerOrder]:
        data = await self._call(self.client.get_order_list)
        return [parse_order(item) for item in data or []]

    async def trade_book(self) -> list[BrokerTrade]:
        # Dhan's trades carry no correlation id: join them to the order book.
        orders = {o.broker_order_id: o for o in await self.order_book()}
        data = await self._call(self.client.get_trade_book)
        trades = []
        for item in data or []:
            order = orders.get(str(item.get("orderId", "")))
            trades.append(parse_trade(item, order.correlation_id if order else ""))
        return trades

    async def trades_for(self, broker_order_id: str, correlation_id: str) -> list[BrokerTrade]:
        """The trades of one order (``GET /trades/{order-id}``): the stream's fills get their exchange trade ids here."""
        data = await self._call(self.client.get_trade_book, broker_order_id)
        items = data if isinstance(data, list) else [data] if isinstance(data, dict) and data else []
        return [parse_trade(item, correlation_id) for item in items if item.get("tradedQuantity")]

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
        if not isinstance(data, dict):
            raise Unavailable("Dhan returned no fund limits")
        available = _money(data, "availabelBalance", "availableBalance")
        utilised = _money(data, "utilizedAmount")
        return Funds(available=available, utilised=utilised, total=_money(data, "sodLimit"))

    # --- margin ----------------------------------------------------------------------------

    async def basket_margin(self, legs: list[MarginLeg]) -> BasketMargin:
        """Dhan's margin calculator for the whole basket (hedge benefit included), cached briefly.

        Raises Unavailable (or Throttled/AuthExpired) when it cannot answer: the
        caller refuses the entry. Exits never ask."""
        key = tuple(sorted((leg.security_id, str(leg.side), leg.quantity, str(leg.price), leg.product) for leg in legs))
        cached = self._margins.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.margin_cache_s:
            return cached[1]
        scrips = [
            {
                "exchangeSegment": leg.exchange_segment,
                "transactionType": str(leg.side),
                "quantity": int(leg.quantity),
                "productType": leg.product,
                "securityId": leg.security_id,
                "price": float(leg.price),
                "triggerPrice": 0.0,
            }
            for leg in legs
        ]
        if len(scrips) == 1:
            leg = legs[0]
            data = await self._call(
                self.client.margin_calculator,
                leg.security_id,
                leg.exchange_segment,
                str(leg.side),
                leg.quantity,
                leg.product,
                float(leg.price),
            )
        else:
            data = await self._call(self.client.margin_calculator_multi, scrips, False, False)
        if not isinstance(data, dict):
            raise Unavailable("margin calculator: no answer")
        total = _money(data, "totalMargin", "total_margin")
        if total <= 0 and not any(k in data for k in ("totalMargin", "total_margin")):
            raise Unavailable("margin calculator: the answer has no total margin")
        margin = BasketMargin(
            total=total,
            span=_money(data, "spanMargin", "span_margin"),
            exposure=_money(data, "exposureMargin", "exposure_margin"),
            hedge_benefit=_money(data, "hedgeBenefit", "hedge_benefit"),
        )
        self._margins = {k: v for k, v in self._margins.items() if now - v[0] < self.margin_cache_s}
        self._margins[key] = (now, margin)
        return margin

    # --- Trader's Control: kill switch and the broker-side P&L exit -------------------------------

    async def kill_switch(self, activate: bool = True) -> bool:
        await self._call(self.client.kill_switch, "ACTIVATE" if activate else "DEACTIVATE", writes=True)
        return activate

    async def kill_switch_status(self) -> bool:
        data = await self._call(self.client.status_kill_switch)
        text = str((data or {}).get("killSwitchStatus", "") if isinstance(data, dict) else data).upper()
        if "DEACTIVATE" in text or text in ("INACTIVE", "OFF", "FALSE"):
            return False
        if "ACTIVATE" in text or text in ("ACTIVE", "ON", "TRUE"):
            return True
        raise Unavailable(f"kill switch status not understood: {text[:80]!r}")

    async def set_pnl_exit(self, *, loss: Decimal, profit: Decimal | None = None) -> PnlExit:
        # Dhan requires a profit target too; one far beyond any day's range leaves the upside alone.
        profit = profit if profit is not None else loss * 100
        await self._call(self.client.set_pnl_exit, float(profit), float(loss), ["INTRADAY"], True, writes=True)
        return await self.pnl_exit()

    async def pnl_exit(self) -> PnlExit:
        return parse_pnl_exit(await self._call(self.client.get_pnl_exit))

    async def stop_pnl_exit(self) -> None:
        await self._call(self.client.stop_pnl_exit, writes=True)

    # --- push --------------------------------------------------------------------------------

    @property
    def push_healthy(self) -> bool:
        return self.bridge is not None and self.bridge.healthy

    async def start(self, oms) -> None:
        if not self.streams or self.bridge is not None:
            return
        from trading.brokers.dhan_stream import OrderStreamBridge

        self.bridge = OrderStreamBridge.for_broker(self, oms)
        await self.bridge.start()

    async def close(self) -> None:
        self._unsubscribe()
        if self.bridge is not None:
            await self.bridge.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
