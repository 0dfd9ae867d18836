"""Dhan's two websockets, as our own thin clients.

dhanhq's ``OrderUpdate`` prints its login message (client id and token) to
stdout and has no reconnect; its ``MarketFeed`` prints, puts the token in a
URL it may log, and its ``close_connection()`` blocks forever on a dead socket
(DhanHQ-py #139). These clients speak the same protocol and:

* reconnect with back-off (0.2 s doubling to 5 s, reset once a connection has
  delivered something);
* take the token from ``token_provider`` at every connect, and reconnect at
  once when it changes (a renewal in this process, or one written to the
  token file by another);
* detect a silent socket — no frame and no pong for ``silence_s`` — and
  close it without waiting for a closing handshake (the transport is aborted);
* never log the token, the URL that carries it, or the login message: only
  the kind of failure and Dhan's code.

``OrderUpdateStream`` (JSON): sends ``{"LoginReq": {"MsgCode": 42, "ClientId",
"Token"}, "UserType": "SELF"}`` and hands every ``order_alert``'s ``Data`` to
``on_update``.

``MarketFeedStream`` (binary, v2): connects to ``?version=2&token=…&clientId=…
&authType=2``, subscribes in JSON (request code 15/17/21, 100 instruments a
message), and hands every parsed message (``quanthub.dhan.packets.Parsed``)
to ``on_packets``. A disconnect packet (805–809) is typed like the REST
envelopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from quanthub.dhan import packets
from quanthub.dhan.errors import DATA_CODE_MEANING, DhanError, DhanThrottled, classify

log = logging.getLogger(__name__)
# websockets logs the request line — the market feed's carries the token — at DEBUG: ours never goes below INFO.
_ws_log = logging.getLogger("quanthub.dhan.ws")
_ws_log.setLevel(logging.INFO)
BACKOFF = (0.2, 0.4, 0.8, 1.6, 3.2, 5.0)


class Stream:
    """Connect, authenticate, read, watch; again and again until ``stop``."""

    name = "stream"

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        token_provider: Callable[[], str],
        silence_s: float = 10.0,
        open_timeout_s: float = 3.0,
        on_state: Callable[[str, str], None] | None = None,
    ):
        self.url = url
        self.client_id = client_id
        self.token_provider = token_provider
        self.silence_s = silence_s
        self.open_timeout_s = open_timeout_s
        self.on_state = on_state
        self.connected = asyncio.Event()
        self.connects = 0
        self.reconnects = 0
        self.last_error: DhanError | str | None = None
        self.last_frame_at = 0.0
        self._token = ""
        self._ws: ClientConnection | None = None
        self._stopping = False
        self._task: asyncio.Task | None = None
        self._renewed = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self.run(), name=f"dhan-{self.name}")
        return self._task

    async def stop(self) -> None:
        self._stopping = True
        self._abort()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=1.0)

    def token_renewed(self, token: str | None = None) -> None:
        """A renewal happened: reconnect with the new token now."""
        self._renewed.set()

    @property
    def token(self) -> str:
        """The token the current (or last) connection authenticated with."""
        return self._token

    @property
    def healthy(self) -> bool:
        return self.connected.is_set() and time.monotonic() - self.last_frame_at < self.silence_s

    def _state(self, state: str, detail: str = "") -> None:
        if self.on_state is not None:
            try:
                self.on_state(state, detail)
            except Exception:
                log.exception("stream state listener failed", extra={"stream": self.name})

    def _abort(self) -> None:
        """Close without a closing handshake: a dead peer never answers one."""
        ws = self._ws
        if ws is not None and ws.transport is not None:
            ws.transport.abort()

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        while not self._stopping:
            delivered = False
            opened = time.monotonic()
            try:
                delivered = await self._session()
            except asyncio.CancelledError:
                raise
            except DhanError as exc:
                self.last_error = exc
                log.warning(
                    "dhan stream refused", extra={"stream": self.name, "code": exc.code, "error": type(exc).__name__}
                )
                self._state("refused", str(exc))
            except (OSError, ConnectionClosed, InvalidStatus, TimeoutError, asyncio.IncompleteReadError) as exc:
                self.last_error = type(exc).__name__
                self._state("dropped", type(exc).__name__)
            except Exception as exc:  # a bug in a handler must not end the stream
                self.last_error = type(exc).__name__
                log.exception("dhan stream failed", extra={"stream": self.name})
                self._state("dropped", type(exc).__name__)
            finally:
                self.connected.clear()
                self._ws = None
            if self._stopping:
                break
            # A connection that delivered, or stayed up a while, was a success: the next is tried at once.
            # One refused or dropped at once (a bad token, a server turning us away) backs off.
            healthy = delivered or (self.connects and time.monotonic() - opened >= 1.0)
            attempt = 0 if healthy else attempt + 1
            delay = BACKOFF[min(attempt, len(BACKOFF) - 1)] if attempt else BACKOFF[0] / 4
            if isinstance(self.last_error, DhanThrottled):
                delay = max(delay, 5.0)  # Dhan: too many connections; pressing on may block the user
            self.reconnects += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renewed.wait(), timeout=delay)

    async def _session(self) -> bool:
        """One connection: True if it delivered anything (the back-off starts again)."""
        self._renewed.clear()
        self._token = self.token_provider() or ""
        try:
            ws = await connect(
                self.connect_url(self._token),
                open_timeout=self.open_timeout_s,
                ping_interval=None,  # our own watchdog pings and judges silence
                close_timeout=0.5,
                proxy=None,
                max_size=None,
                compression=None,
                logger=_ws_log,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise classify("", f"handshake refused: HTTP {status}", http_status=status) from None
        self._ws = ws
        self.connects += 1
        delivered = False
        watchdog = asyncio.create_task(self._watch(ws))
        try:
            await self.on_open(ws)
            self.last_frame_at = time.monotonic()
            self.connected.set()
            self._state("connected")
            async for message in ws:
                self.last_frame_at = time.monotonic()
                delivered = True
                await self.on_message(message)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            self._abort()
        return delivered

    async def _watch(self, ws: ClientConnection) -> None:
        """Ping every third of the silence bound; abort when nothing (frame or pong) came within it,
        or when the token changed."""
        interval = max(self.silence_s / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            if self._renewed.is_set() or (self.token_provider() or "") != self._token:
                log.info("dhan stream re-authenticating after a token renewal", extra={"stream": self.name})
                self._state("renewing")
                self._abort()
                return
            try:
                pong = await ws.ping()
            except ConnectionClosed:
                return
            pong.add_done_callback(lambda f: f.cancelled() or setattr(self, "last_frame_at", time.monotonic()))
            if time.monotonic() - self.last_frame_at >= self.silence_s:
                log.warning("dhan stream silent: closing it", extra={"stream": self.name, "silence_s": self.silence_s})
                self._state("silent")
                self._abort()
                return

    # --- protocol hooks ------------------------------------------------------------------

    def connect_url(self, token: str) -> str:
        return self.url

    async def on_open(self, ws: ClientConnection) -> None: ...

    async def on_message(self, message: str | bytes) -> None: ...


class OrderUpdateStream(Stream):
    name = "order-update"

    def __init__(self, url: str, *, on_update: Callable[[dict], Awaitable[None] | None], **kwargs):
        super().__init__(url, **kwargs)
        self.on_update = on_update
        self.messages = 0

    async def on_open(self, ws: ClientConnection) -> None:
        login = {
            "LoginReq": {"MsgCode": 42, "ClientId": str(self.client_id), "Token": self._token},
            "UserType": "SELF",
        }
        await ws.send(json.dumps(login))

    async def on_message(self, message: str | bytes) -> None:
        try:
            data = json.loads(message)
        except ValueError:
            log.warning("dhan order update: not JSON", extra={"stream": self.name, "size": len(message)})
            return
        if not isinstance(data, dict):
            return
        if data.get("Type") == "order_alert":
            self.messages += 1
            result = self.on_update(data.get("Data") or {})
            if asyncio.iscoroutine(result):
                await result
            return
        # Anything else that names an error is the server refusing us (a bad or expired token).
        code = str(data.get("errorCode") or data.get("ErrorCode") or data.get("code") or "")
        if code or str(data.get("Type", "")).lower() in ("error", "login_failed", "auth_failed"):
            message_text = str(data.get("errorMessage") or data.get("message") or data.get("Message") or "refused")
            raise classify(code or "807", message_text)


class MarketFeedStream(Stream):
    name = "market-feed"

    def __init__(
        self,
        url: str,
        *,
        on_packets: Callable[[packets.Parsed, float], Awaitable[None] | None],
        instruments: list[tuple[str, str]] | None = None,
        request_code: int = packets.REQUEST_FULL,
        **kwargs,
    ):
        super().__init__(url, **kwargs)
        self.on_packets = on_packets
        self.request_code = request_code
        self.instruments: dict[tuple[str, str], None] = dict.fromkeys(instruments or [])
        self.packets = 0

    def connect_url(self, token: str) -> str:
        query = urlencode({"version": 2, "token": token, "clientId": self.client_id, "authType": 2})
        return f"{self.url}{'&' if '?' in self.url else '?'}{query}"

    async def on_open(self, ws: ClientConnection) -> None:
        for message in packets.subscription(list(self.instruments), self.request_code):
            await ws.send(message)

    async def subscribe(self, instruments: list[tuple[str, str]]) -> None:
        """Add instruments; sent now if connected, and again at every reconnect."""
        new = [i for i in instruments if i not in self.instruments]
        self.instruments.update(dict.fromkeys(new))
        ws = self._ws
        if new and ws is not None and self.connected.is_set():
            with contextlib.suppress(ConnectionClosed):
                for message in packets.subscription(new, self.request_code):
                    await ws.send(message)

    async def unsubscribe(self, instruments: list[tuple[str, str]]) -> None:
        gone = [i for i in instruments if i in self.instruments]
        for i in gone:
            self.instruments.pop(i, None)
        ws = self._ws
        if gone and ws is not None and self.connected.is_set():
            with contextlib.suppress(ConnectionClosed):
                for message in packets.subscription(gone, self.request_code + 1):
                    await ws.send(message)

    async def on_message(self, message: str | bytes) -> None:
        if isinstance(message, str):
            return  # the v2 feed is binary; text frames carry nothing we use
        received = time.time()
        parsed = packets.parse(message)
        if parsed.disconnect:
            code = str(parsed.disconnect[0])
            raise classify(code, DATA_CODE_MEANING.get(code, "disconnected by the server"))
        self.packets += parsed.count
        result = self.on_packets(parsed, received)
        if asyncio.iscoroutine(result):
            await result
