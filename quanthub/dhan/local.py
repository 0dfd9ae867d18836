"""A local stand-in for Dhan: its REST API, the Live Order Update websocket and
the Live Market Feed websocket, speaking the v2 shapes on 127.0.0.1.

For rehearsing a live session without the exchange (point DHAN_API_BASE_URL,
DHAN_ORDER_UPDATE_URL and DHAN_MARKET_FEED_URL at it), and for the tests and
the stream benchmark. Its exchange is simple and deterministic: a LIMIT or
MARKET order is acknowledged (PENDING) and, unless ``fill`` is off, filled in
full at its price (or the last price) in ``fill_parts`` trades. Everything a
client does is recorded (``calls``, ``logins``, ``subscriptions``) so a test
can assert what went over the wire.

The REST server runs in its own thread (the broker's calls are synchronous
``requests``); the websockets run on the caller's asyncio loop; an order placed
over REST is pushed to the order-update sockets on that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import itertools
import json
import logging
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

from quanthub.clock import IST
from quanthub.dhan import packets


@dataclass
class Order:
    order_id: str
    correlation_id: str
    security_id: str
    segment: str
    side: str
    order_type: str
    quantity: int
    price: float
    status: str = "PENDING"
    filled: int = 0
    average: float = 0.0
    reason: str = ""
    code: str = ""
    created: str = ""


@dataclass
class LocalDhan:
    client_id: str = "1000000001"
    token: str = field(default_factory=lambda: f"local-{secrets.token_hex(16)}")
    fill: bool = True
    fill_parts: int = 1
    pnl_exit: dict | None = None
    kill_switch: bool = False
    static_ip: str = "203.0.113.10"
    orders: dict[str, Order] = field(default_factory=dict)
    trades: list[dict] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    logins: list[dict] = field(default_factory=list)
    feed_logins: list[dict] = field(default_factory=list)
    subscriptions: list[dict] = field(default_factory=list)
    ltp: dict[str, float] = field(default_factory=dict)
    silent: bool = False  # websockets stop answering pings and sending

    def __post_init__(self):
        self._ids = itertools.count(1121000001)
        self._trade_ids = itertools.count(55000001)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._order_sockets: set[ServerConnection] = set()
        self._feed_sockets: set[ServerConnection] = set()
        self._http: ThreadingHTTPServer | None = None
        self._ws_servers = []
        self.order_connects = 0
        self.feed_connects = 0

    # --- start and stop ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", http_port: int = 0, order_port: int = 0, feed_port: int = 0):
        self._loop = asyncio.get_running_loop()
        handler = _handler(self)
        self._http = ThreadingHTTPServer((host, http_port), handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="local-dhan-http", daemon=True).start()
        quiet = logging.getLogger("quanthub.dhan.local")  # its request lines carry the token: never at DEBUG
        quiet.setLevel(logging.WARNING)
        orders = await serve(self._order_socket, host, order_port, compression=None, ping_interval=None, logger=quiet)
        feed = await serve(self._feed_socket, host, feed_port, compression=None, ping_interval=None, logger=quiet)
        self._ws_servers = [orders, feed]
        self.api_url = f"http://{host}:{self._http.server_address[1]}/v2"
        self.auth_url = f"http://{host}:{self._http.server_address[1]}"
        self.order_url = f"ws://{host}:{orders.sockets[0].getsockname()[1]}"
        self.feed_url = f"ws://{host}:{feed.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        for server in self._ws_servers:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def settings(self) -> dict:
        """The settings that point Quant Hub at this stand-in."""
        return {
            "DHAN_CLIENT_ID": self.client_id,
            "DHAN_ACCESS_TOKEN": self.token,
            "DHAN_API_BASE_URL": self.api_url,
            "DHAN_AUTH_BASE_URL": self.auth_url,
            "DHAN_ORDER_UPDATE_URL": self.order_url,
            "DHAN_MARKET_FEED_URL": self.feed_url,
        }

    # --- what a test drives ------------------------------------------------------------------

    def renew(self) -> str:
        """A new token; sockets on the old one are closed (as Dhan does when a token expires)."""
        self.token = f"local-{secrets.token_hex(16)}"
        return self.token

    async def drop_sockets(self) -> None:
        for ws in list(self._order_sockets | self._feed_sockets):
            if ws.transport is not None:
                ws.transport.abort()

    async def push_order(self, data: dict) -> None:
        message = json.dumps({"Type": "order_alert", "Data": data})
        for ws in list(self._order_sockets):
            with contextlib.suppress(Exception):
                await ws.send(message)

    async def push_feed(self, payload: bytes) -> None:
        for ws in list(self._feed_sockets):
            with contextlib.suppress(Exception):
                await ws.send(payload)

    def update_of(self, order: Order, *, traded_qty: int | None = None, status: str | None = None) -> dict:
        exchange, segment = {"NSE_FNO": ("NSE", "D"), "IDX_I": ("NSE", "I")}.get(order.segment, ("NSE", "D"))
        now = dt.datetime.now(tz=IST).strftime("%Y-%m-%d %H:%M:%S")
        qty = order.filled if traded_qty is None else traded_qty
        return {
            "Exchange": exchange,
            "Segment": segment,
            "Source": "N",
            "SecurityId": order.security_id,
            "ClientId": self.client_id,
            "ExchOrderNo": f"1400000{order.order_id}",
            "OrderNo": order.order_id,
            "Product": "I",
            "TxnType": "B" if order.side == "BUY" else "S",
            "OrderType": "LMT" if order.order_type == "LIMIT" else "MKT",
            "Validity": "DAY",
            "Quantity": order.quantity,
            "RemainingQuantity": order.quantity - qty,
            "TradedQty": qty,
            "Price": order.price,
            "TriggerPrice": 0,
            "TradedPrice": order.price,
            "AvgTradedPrice": order.average if qty else 0,
            "OrderDateTime": order.created,
            "ExchOrderTime": order.created,
            "LastUpdatedTime": now,
            "Remarks": "",
            "ReasonDescription": order.reason or "CONFIRMED",
            "Instrument": "OPTIDX",
            "Status": status or order.status,
            "CorrelationId": order.correlation_id,
        }

    # --- the exchange -------------------------------------------------------------------------

    def _place(self, body: dict) -> dict:
        with self._lock:
            order = Order(
                order_id=str(next(self._ids)),
                correlation_id=str(body.get("correlationId", "")),
                security_id=str(body.get("securityId")),
                segment=str(body.get("exchangeSegment")),
                side=str(body.get("transactionType")),
                order_type=str(body.get("orderType")),
                quantity=int(body.get("quantity") or 0),
                price=float(body.get("price") or self.ltp.get(str(body.get("securityId")), 0.0)),
                created=dt.datetime.now(tz=IST).strftime("%Y-%m-%d %H:%M:%S"),
            )
            if self.kill_switch:
                order.status, order.code, order.reason = "REJECTED", "DH-906", "Kill switch is active"
            self.orders[order.order_id] = order
        updates = [self.update_of(order)]
        if self.fill and order.status == "PENDING":
            part = max(order.quantity // self.fill_parts, 1)
            while order.filled < order.quantity:
                qty = min(part, order.quantity - order.filled)
                with self._lock:
                    self.trades.append(
                        {
                            "dhanClientId": self.client_id,
                            "orderId": order.order_id,
                            "exchangeOrderId": f"1400000{order.order_id}",
                            "exchangeTradeId": str(next(self._trade_ids)),
                            "transactionType": order.side,
                            "exchangeSegment": order.segment,
                            "productType": "INTRADAY",
                            "orderType": order.order_type,
                            "securityId": order.security_id,
                            "tradedQuantity": qty,
                            "tradedPrice": order.price,
                            "createTime": order.created,
                            "updateTime": order.created,
                            "exchangeTime": order.created,
                        }
                    )
                    order.filled += qty
                    order.average = order.price
                    order.status = "TRADED" if order.filled >= order.quantity else "PART_TRADED"
                updates.append(self.update_of(order))
        if self._loop is not None:
            for update in updates:
                asyncio.run_coroutine_threadsafe(self.push_order(update), self._loop)
        return {"orderId": order.order_id, "orderStatus": "REJECTED" if order.status == "REJECTED" else "PENDING"}

    def order_json(self, order: Order) -> dict:
        return {
            "dhanClientId": self.client_id,
            "orderId": order.order_id,
            "correlationId": order.correlation_id,
            "orderStatus": order.status,
            "transactionType": order.side,
            "exchangeSegment": order.segment,
            "productType": "INTRADAY",
            "orderType": order.order_type,
            "validity": "DAY",
            "securityId": order.security_id,
            "quantity": order.quantity,
            "price": order.price,
            "createTime": order.created,
            "updateTime": order.created,
            "omsErrorCode": order.code,
            "omsErrorDescription": order.reason,
            "filledQty": order.filled,
            "averageTradedPrice": order.average,
        }

    def positions(self) -> list[dict]:
        net: dict[str, dict] = {}
        for trade in self.trades:
            row = net.setdefault(
                trade["securityId"],
                {
                    "securityId": trade["securityId"],
                    "exchangeSegment": trade["exchangeSegment"],
                    "netQty": 0,
                    "costPrice": trade["tradedPrice"],
                    "realizedProfit": 0.0,
                },
            )
            sign = 1 if trade["transactionType"] == "BUY" else -1
            row["netQty"] += sign * trade["tradedQuantity"]
        return list(net.values())

    def answer(self, method: str, path: str, query: dict, body: dict, headers) -> tuple[int, object]:
        self.calls.append((method, path))
        if path.endswith("/app/generateAccessToken"):
            if query.get("pin") and query.get("totp"):
                return 200, {"accessToken": self.renew(), "expiryTime": "2026-12-02T08:50:00"}
            return 400, {"errorCode": "DH-901", "errorMessage": "Invalid TOTP"}
        if headers.get("access-token") != self.token:
            return 401, {
                "errorType": "Invalid_Authentication",
                "errorCode": "DH-901",
                "errorMessage": "Client ID or user generated access token is invalid or expired.",
            }
        route = path.removeprefix("/v2")
        if route == "/RenewToken":
            return 200, {"accessToken": self.renew(), "expiryTime": "2026-12-02T08:50:00"}
        if route == "/orders" and method == "POST":
            return 200, self._place(body)
        if route == "/orders" and method == "GET":
            return 200, [self.order_json(o) for o in self.orders.values()]
        if route.startswith("/orders/external/"):
            cid = route.rsplit("/", 1)[1]
            found = [o for o in self.orders.values() if o.correlation_id == cid]
            if not found:
                return 400, {"errorType": "Order_Error", "errorCode": "DH-906", "errorMessage": "No order found"}
            return 200, self.order_json(found[-1])
        if route.startswith("/orders/"):
            order = self.orders.get(route.rsplit("/", 1)[1])
            if order is None:
                return 400, {"errorCode": "DH-906", "errorMessage": "No order found"}
            if method == "DELETE" and order.status in ("PENDING", "PART_TRADED"):
                order.status = "CANCELLED"
                if self._loop is not None:
                    asyncio.run_coroutine_threadsafe(self.push_order(self.update_of(order)), self._loop)
            return 200, self.order_json(order)
        if route.startswith("/trades"):
            order_id = route.removeprefix("/trades").strip("/")
            return 200, [t for t in self.trades if not order_id or t["orderId"] == order_id]
        if route == "/positions":
            return 200, self.positions()
        if route == "/fundlimit":
            return 200, {
                "dhanClientId": self.client_id,
                "availabelBalance": 1500000.0,
                "sodLimit": 2000000.0,
                "utilizedAmount": 500000.0,
            }
        if route == "/margincalculator/multi":
            total = sum(float(s["price"]) * int(s["quantity"]) for s in body.get("scripList", []))
            # Dhan v2 answers this one in snake_case, amounts as strings.
            return 200, {
                "total_margin": f"{total:.2f}",
                "span_margin": "0.00",
                "exposure_margin": "0.00",
                "equity_margin": "0.00",
                "fo_margin": f"{total:.2f}",
                "commodity_margin": "0.00",
                "currency": "INR",
                "hedge_benefit": "0.00",
            }
        if route == "/margincalculator":
            total = float(body.get("price", 0)) * int(body.get("quantity", 0))
            return 200, {
                "totalMargin": round(total, 2),
                "spanMargin": 0.0,
                "exposureMargin": 0.0,
                "availableBalance": 1500000.0,
            }
        if route == "/pnlExit":
            if method == "POST" or method == "PUT":
                # Read back in GET /pnlExit's own names (Dhan v2), not the request's.
                self.pnl_exit = {
                    "pnlExitStatus": "ACTIVE",
                    "profit": f"{float(body.get('profitValue') or 0):.2f}",
                    "loss": f"{float(body.get('lossValue') or 0):.2f}",
                    "segments": body.get("productType") or [],
                    "enable_kill_switch": bool(body.get("enableKillSwitch")),
                }
                return 200, {"pnlExitStatus": "ACTIVE", "message": "P&L based exit configured successfully"}
            if method == "DELETE":
                self.pnl_exit = None
                return 200, {"pnlExitStatus": "DISABLED", "message": "P&L based exit stopped successfully"}
            return 200, self.pnl_exit or {"pnlExitStatus": "DISABLED"}
        if route == "/killswitch":
            if method == "POST":
                self.kill_switch = query.get("killSwitchStatus", "") == "ACTIVATE"
                return 200, {
                    "dhanClientId": self.client_id,
                    "killSwitchStatus": f"Kill Switch has been successfully {'activated' if self.kill_switch else 'deactivated'}",
                }
            return 200, {
                "dhanClientId": self.client_id,
                "killSwitchStatus": "ACTIVATE" if self.kill_switch else "DEACTIVATE",
            }
        if route == "/ip/getIP":
            return 200, {
                "dhanClientId": self.client_id,
                "primaryIP": self.static_ip,
                "secondaryIP": "",
                "modifyDatePrimary": "2026-11-01",
                "primaryIPFlag": "PRIMARY",
            }
        if route == "/profile":
            return 200, {
                "dhanClientId": self.client_id,
                "tokenValidity": "02/12/2026 08:50",
                "dataPlan": "Active",
                "activeSegment": "Equity, Derivative",
            }
        if route == "/marketfeed/ltp":
            data = {
                seg: {str(i): {"last_price": self.ltp.get(str(i), 100.0)} for i in ids}
                for seg, ids in body.items()
                if seg != "dhanClientId"
            }
            return 200, {"data": data, "status": "success"}
        if route == "/optionchain":
            return 200, {"data": {"last_price": 24500.0, "oc": {}}, "status": "success"}
        return 404, {"errorCode": "DH-905", "errorMessage": f"no route {route}"}

    # --- the websockets -----------------------------------------------------------------------

    async def _order_socket(self, ws: ServerConnection) -> None:
        self.order_connects += 1
        try:
            login = json.loads(await asyncio.wait_for(ws.recv(), 5))
        except (TimeoutError, ValueError):
            return
        self.logins.append(login)
        request = login.get("LoginReq") or {}
        if request.get("Token") != self.token or str(request.get("ClientId")) != self.client_id:
            await ws.send(
                json.dumps({"Type": "error", "errorCode": "807", "errorMessage": "Access token is invalid or expired"})
            )
            await ws.close(4001, "auth failed")
            return
        if self.silent:
            ws.transport.pause_reading()  # reads nothing, so it answers no ping
        self._order_sockets.add(ws)
        token = self.token
        try:
            while True:
                try:
                    await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    pass
                if self.token != token:  # renewed: the old token's connection ends
                    await ws.close(4001, "token expired")
                    return
        except Exception:
            return
        finally:
            self._order_sockets.discard(ws)

    async def _feed_socket(self, ws: ServerConnection) -> None:
        self.feed_connects += 1
        query = parse_qs(urlsplit(ws.request.path).query)
        self.feed_logins.append({k: v[0] for k, v in query.items()})
        if query.get("token", [""])[0] != self.token:
            await ws.send(packets.disconnect(807))
            await ws.close(4001, "auth failed")
            return
        if self.silent:
            ws.transport.pause_reading()  # reads nothing, so it answers no ping
        self._feed_sockets.add(ws)
        token = self.token
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.2)
                except TimeoutError:
                    message = None
                if message is not None:
                    with contextlib.suppress(ValueError):
                        self.subscriptions.append(json.loads(message))
                if self.token != token:
                    await ws.send(packets.disconnect(807))
                    await ws.close(4001, "token expired")
                    return
        except Exception:
            return
        finally:
            self._feed_sockets.discard(ws)


def _handler(local: LocalDhan):
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as Dhan's servers do: a client's requests reuse one connection
        # (every answer carries its Content-Length).
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall

        def log_message(self, format, *args):  # noqa: A002 (the base class's name)
            return  # quiet: a request line may carry query parameters

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = {}
            if length:
                with contextlib.suppress(ValueError):
                    body = json.loads(self.rfile.read(length))
            status, payload = local.answer(
                method, parts.path, query, body if isinstance(body, dict) else {}, self.headers
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Date", email.utils.formatdate(usegmt=True))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            self._serve("GET")

        def do_POST(self):  # noqa: N802
            self._serve("POST")

        def do_PUT(self):  # noqa: N802
            self._serve("PUT")

        def do_DELETE(self):  # noqa: N802
            self._serve("DELETE")

    return Handler
