"""The live feed, converted into the same ``ChainSnapshot`` and ``LtpTick`` the simulator yields.

* LTP of the indices, their futures, India VIX and the candidate option
  contracts (``subscribe``: the strategy's ATM ± 3 strikes, re-subscribed as
  ATM moves) by push, from Dhan's Live Market Feed websocket
  (``quanthub.dhan.streams.MarketFeedStream``; full packets, so option ticks
  carry the top of book). While the socket is down, LTP of the indices,
  futures and VIX is polled over REST every second until it is back.
* The option chain over REST, one request per underlying and expiry at least
  ``chain_every_s`` (3 s, Dhan's limit) apart: a pacer keyed by both
  guarantees the gap however late a previous call returned.
* Dhan's data-API envelopes are typed (``quanthub.dhan.errors``): 805 (too
  many requests) backs that call off, doubling up to a minute; 806 (no data
  plan) raises one alert and pauses that call for five minutes — no polling
  storm; 807 (token expired) raises one alert and picks up a renewed token.
  A failed call is logged with Dhan's code and message and skipped: feed
  health goes stale and the risk gate stops entries; nothing is raised into
  the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import numpy as np
from asgiref.sync import sync_to_async

from marketdata.feeds.base import CE, PE, ChainSnapshot, Feed, FeedItem, LtpTick
from quanthub.clock import Clock, RealClock
from quanthub.dhan import packets
from quanthub.dhan.errors import DhanAuthError, DhanDataPlan, DhanError, DhanThrottled, DhanTransport
from quanthub.dhan.http import error_of
from quanthub.dhan.session import contain_client

log = logging.getLogger(__name__)
INDIA_VIX_SECURITY_ID = "21"


@dataclass
class UnderlyingFeed:
    symbol: str
    security_id: str
    expiry: dt.date
    future_security_id: str | None = None
    contract_ids: dict[tuple[float, int], str] = field(default_factory=dict)  # (strike, CE/PE) -> security id


def _inner(data):
    """dhanhq hands back Dhan's whole JSON; the payload sits under its own "data"."""
    return data.get("data", data) if isinstance(data, dict) else {}


def chain_from_response(underlying: UnderlyingFeed, data: dict, *, now: dt.datetime, seq: int) -> ChainSnapshot:
    payload = _inner(data)
    oc = payload.get("oc") or {}
    rows = []
    for strike_key in sorted(oc, key=float):
        strike = float(strike_key)
        for side, code in (("ce", CE), ("pe", PE)):
            leg = oc[strike_key].get(side)
            if not leg:
                continue
            greeks = leg.get("greeks") or {}
            sid = str(leg.get("security_id") or underlying.contract_ids.get((strike, code), ""))
            rows.append(
                (
                    sid,
                    strike,
                    code,
                    leg.get("last_price", np.nan),
                    leg.get("oi", 0),
                    leg.get("previous_oi", 0),
                    leg.get("volume", 0),
                    leg.get("top_bid_price", np.nan),
                    leg.get("top_ask_price", np.nan),
                    leg.get("top_bid_quantity", 0),
                    leg.get("top_ask_quantity", 0),
                    leg.get("implied_volatility", 0.0),
                    greeks.get("delta", 0.0),
                    greeks.get("gamma", 0.0),
                    greeks.get("theta", 0.0),
                    greeks.get("vega", 0.0),
                )
            )
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in range(16)]
    floats = lambda i: np.array(cols[i], dtype=np.float64)  # noqa: E731
    ints = lambda i: np.array(cols[i], dtype=np.int64)  # noqa: E731
    return ChainSnapshot(
        underlying=underlying.symbol,
        expiry=underlying.expiry,
        exchange_time=now,
        received_at=now,
        underlying_ltp=float(payload.get("last_price") or 0.0),
        security_id=np.array(cols[0], dtype="U20"),
        strike=floats(1),
        option_type=np.array(cols[2], dtype=np.int8),
        last_price=floats(3),
        oi=ints(4),
        prev_oi=ints(5),
        volume=ints(6),
        bid=floats(7),
        ask=floats(8),
        bid_qty=ints(9),
        ask_qty=ints(10),
        iv=floats(11),
        delta=floats(12),
        gamma=floats(13),
        theta=floats(14),
        vega=floats(15),
        seq=seq,
    )


class ChainPacer:
    """At least ``gap_s`` between the starts of two requests for the same key (underlying, expiry).

    ``acquire`` waits on the loop for most of the gap; ``started`` runs in the
    worker thread just before the request leaves and sleeps off whatever the
    thread's own start-up delay left, so the gap holds where the request is sent."""

    def __init__(self, gap_s: float = 3.0, *, monotonic: Callable[[], float] = time.monotonic):
        self.gap_s = gap_s
        self.monotonic = monotonic
        self._last: dict[tuple, float] = {}
        self._lock = threading.Lock()

    # Between the mark in ``started`` and the request on the wire the thread may be
    # preempted for a moment; the next request waits this much longer, so a delay of the
    # one and not the other cannot bring two requests closer than the gap where they arrive.
    margin_s = 0.05

    def wait_s(self, key: tuple) -> float:
        last = self._last.get(key)
        return 0.0 if last is None else max(last + self.gap_s + self.margin_s - self.monotonic(), 0.0)

    async def acquire(self, key: tuple) -> None:
        delay = self.wait_s(key)
        if delay > 0:
            await asyncio.sleep(delay)

    def started(self, key: tuple) -> None:
        """In the worker thread, right before the request: the gap, to the end."""
        with self._lock:
            delay = self.wait_s(key)
            if delay > 0:
                time.sleep(delay)
            self._last[key] = self.monotonic()


@dataclass(frozen=True, slots=True)
class Name:
    security_id: str
    segment: str
    symbol: str
    kind: str  # INDEX | FUT | VIX | OPT


def ticks_from(parsed: packets.Parsed, names: dict[int, Name], now: dt.datetime, seq: int) -> list[LtpTick]:
    """The parsed packets of one message as ticks: whole columns to Python values at once."""
    columns = parsed.ticks
    if not columns:
        return []
    ticks = []
    unknown = Name("", "", "", "OPT")
    rows = zip(
        columns["security_id"].tolist(),
        columns["ltp"].tolist(),
        columns["bid"].tolist(),
        columns["ask"].tolist(),
        columns["bid_qty"].tolist(),
        columns["ask_qty"].tolist(),
        columns["oi"].tolist(),
        strict=True,
    )
    for sid, ltp, bid, ask, bid_qty, ask_qty, oi in rows:
        name = names.get(sid, unknown)
        seq += 1
        ticks.append(
            LtpTick(
                name.security_id or str(sid),
                name.segment,
                name.symbol or str(sid),
                name.kind,
                ltp,
                now,  # Dhan's LTT is the last trade's time, not the quote's: the arrival dates the tick
                now,
                seq,
                bid,
                ask,
                bid_qty,
                ask_qty,
                oi,
            )
        )
    return ticks


class DhanFeed(Feed):
    name = "dhan"

    def __init__(
        self,
        *,
        client,
        underlyings: list[UnderlyingFeed],
        clock: Clock | None = None,
        timeout_s: float = 3.0,
        chain_every_s: float = 3.0,
        ltp_every_s: float = 1.0,
        market_feed=None,
        options: dict[str, str] | None = None,
        alert: Callable[[str, str, str], None] | None = None,
        token_provider: Callable[[], str] | None = None,
    ):
        # dhanhq's own HTTP layer reads an 805/806/807 envelope as {"error_code": None}: ours types it.
        self.client = contain_client(client)
        self.client.dhan_http.timeout = timeout_s
        self.underlyings = underlyings
        self.clock = clock or RealClock()
        self.timeout_s = timeout_s
        self.chain_every_s = chain_every_s
        self.ltp_every_s = ltp_every_s
        self.pacer = ChainPacer(chain_every_s)
        self.market_feed = market_feed  # quanthub.dhan.streams.MarketFeedStream, or None: REST LTP only
        self.options = dict(options or {})  # option security id -> its display name
        self.alert = alert
        self.token_provider = token_provider
        self._closed = False
        self._seq = 0
        self.failures = 0
        self.errors: dict[str, DhanError] = {}  # the last error of each call, for health and the pre-flight
        self._blocked_until: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._alerted: set[tuple[str, str]] = set()
        self._queue: asyncio.Queue | None = None
        self._pending: set[asyncio.Task] = set()
        self._names: dict[int, Name] = {}
        for u in underlyings:
            self._names[int(u.security_id)] = Name(u.security_id, "IDX_I", u.symbol, "INDEX")
            if u.future_security_id:
                self._names[int(u.future_security_id)] = Name(u.future_security_id, "NSE_FNO", f"{u.symbol}-FUT", "FUT")
        self._names[int(INDIA_VIX_SECURITY_ID)] = Name(INDIA_VIX_SECURITY_ID, "IDX_I", "INDIAVIX", "VIX")

    @classmethod
    def from_options(cls, *, clock=None, client=None, **ignored) -> DhanFeed:
        from django.conf import settings

        from marketdata.models import Instrument, Underlying
        from quanthub.dhan.session import dhan_client
        from quanthub.dhan.streams import MarketFeedStream
        from quanthub.dhan.tokens import current_token

        if client is None:
            client = dhan_client(settings.DHAN_CLIENT_ID, current_token())
        clock = clock or RealClock()
        feeds = []
        names = {}
        for underlying in Underlying.objects.filter(is_active=True).exclude(security_id=""):
            options = Instrument.objects.filter(
                underlying=underlying, kind__in=["CE", "PE"], is_active=True, expiry__gte=clock.today()
            )
            expiry = options.order_by("expiry").values_list("expiry", flat=True).first()
            if expiry is None:
                continue
            future = Instrument.objects.filter(underlying=underlying, kind="FUT", is_active=True).order_by("expiry")
            contracts = list(options.filter(expiry=expiry).select_related("underlying"))
            ids = {(float(i.strike), CE if i.kind == "CE" else PE): i.security_id for i in contracts}
            names.update({i.security_id: i.display for i in contracts})
            feeds.append(
                UnderlyingFeed(
                    underlying.symbol,
                    underlying.security_id,
                    expiry,
                    future.values_list("security_id", flat=True).first(),
                    ids,
                )
            )
        if not feeds:
            raise ValueError("No instruments to follow: load Dhan's scrip master first (manage.py load_instruments)")
        feed = cls(
            client=client,
            underlyings=feeds,
            clock=clock,
            timeout_s=settings.DHAN_HTTP_TIMEOUT_S,
            options=names,
            alert=_raise_alert,
            token_provider=current_token,
        )
        feed.market_feed = MarketFeedStream(
            settings.DHAN_MARKET_FEED_URL,
            client_id=settings.DHAN_CLIENT_ID,
            token_provider=current_token,
            silence_s=float(settings.DHAN_STREAM_SILENCE_S),
            on_packets=feed.on_packets,
            on_state=feed._stream_state,
            instruments=feed.base_instruments(),
        )
        return feed

    # --- subscriptions ---------------------------------------------------------------------

    def base_instruments(self) -> list[tuple[str, str]]:
        """The indices, their futures and India VIX: always subscribed."""
        return [(n.segment, n.security_id) for n in self._names.values() if n.kind != "OPT"]

    async def subscribe(self, security_ids: list[str]) -> None:
        """Follow these option contracts on the market feed (the strategy's candidates, ATM ± 3)."""
        wanted = []
        for sid in security_ids:
            sid = str(sid)
            self._names.setdefault(int(sid), Name(sid, "NSE_FNO", self.options.get(sid, sid), "OPT"))
            wanted.append(("NSE_FNO", sid))
        if self.market_feed is not None:
            await self.market_feed.subscribe(wanted)

    async def unsubscribe(self, security_ids: list[str]) -> None:
        if self.market_feed is not None:
            await self.market_feed.unsubscribe([("NSE_FNO", str(sid)) for sid in security_ids])

    # --- pushes -------------------------------------------------------------------------------

    def on_packets(self, parsed: packets.Parsed, received: float) -> None:
        ticks = ticks_from(parsed, self._names, self.clock.now(), self._seq)
        self._seq += len(ticks)
        if self._queue is not None:
            for tick in ticks:
                self._queue.put_nowait(tick)

    def _stream_state(self, state: str, detail: str) -> None:
        if state == "connected" and self.market_feed is not None and self.market_feed.token:
            with contextlib.suppress(AttributeError):  # the chain calls take a renewed token too
                self.client.dhan_http.set_token(self.market_feed.token)
        if state == "refused":
            error = self.market_feed.last_error if self.market_feed is not None else None
            if isinstance(error, DhanError):
                self._typed_failure("market_feed", error)

    # --- REST ------------------------------------------------------------------------------

    async def close(self) -> None:
        self._closed = True
        if self._queue is not None:
            self._queue.put_nowait(None)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _typed_failure(self, call: str, error: DhanError) -> None:
        self.failures += 1
        self.errors[call] = error
        log.warning(
            "dhan feed call failed",
            extra={"call": call, "code": error.code, "error": type(error).__name__, "reason": error.message[:200]},
        )
        now = time.monotonic()
        if isinstance(error, DhanThrottled):
            # Dhan warns that continuing to call after 805 may block the user.
            backoff = min(max(self._backoff.get(call, 0) * 2, error.retry_after or 3.0), 60.0)
            self._backoff[call] = backoff
            self._blocked_until[call] = now + backoff
            self._alert_once(call, error, "WARNING", f"Dhan {call} throttled: backing off {backoff:.0f} s")
        elif isinstance(error, DhanDataPlan):
            self._blocked_until[call] = now + 300.0
            self._alert_once(call, error, "CRITICAL", f"Dhan {call}: the data plan is not active")
        elif isinstance(error, DhanAuthError):
            self._blocked_until[call] = now + 5.0
            self._alert_once(call, error, "CRITICAL", f"Dhan {call}: the access token is not accepted")
            if self.token_provider is not None:
                token = self.token_provider()
                with contextlib.suppress(AttributeError):
                    self.client.dhan_http.set_token(token)

    def _alert_once(self, call: str, error: DhanError, level: str, title: str) -> None:
        key = (call, error.code)
        if key in self._alerted or self.alert is None:
            return
        self._alerted.add(key)
        message = f"{error} — the feed goes stale and entries stop until it recovers"

        async def send() -> None:
            try:
                await sync_to_async(self.alert, thread_sensitive=True)(level, title, message)
            except Exception:  # an alert sink's failure never reaches the feed
                log.exception("feed alert failed")

        try:
            task = asyncio.get_running_loop().create_task(send())
        except RuntimeError:
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _call(self, fn, *args, call: str):
        if time.monotonic() < self._blocked_until.get(call, 0.0):
            return None  # backing off: no request at all
        try:
            response = await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout=self.timeout_s + 1.0)
        except TimeoutError:
            response = None
            error: DhanError | None = DhanTransport("", f"{call} timed out")
        else:
            error = error_of(response, call)
        if error is not None:
            self._typed_failure(call, error)
            return None
        self._backoff.pop(call, None)
        self._alerted = {key for key in self._alerted if key[0] != call}
        self.errors.pop(call, None)
        return response.get("data")

    async def poll_ltp(self) -> list[LtpTick]:
        request: dict[str, list[int]] = {
            "IDX_I": [int(u.security_id) for u in self.underlyings] + [int(INDIA_VIX_SECURITY_ID)]
        }
        futures = [int(u.future_security_id) for u in self.underlyings if u.future_security_id]
        if futures:
            request["NSE_FNO"] = futures
        data = await self._call(self.client.ticker_data, request, call="ltp")
        if data is None:
            return []
        now = self.clock.now()
        ticks = []
        for segment, quotes in _inner(data).items():
            if not isinstance(quotes, dict):
                continue
            for sid, quote in quotes.items():
                if not isinstance(quote, dict):
                    continue
                name = self._names.get(int(sid)) if str(sid).isdigit() else None
                symbol, kind = (name.symbol, name.kind) if name else (str(sid), "INDEX")
                ticks.append(
                    LtpTick(
                        str(sid),
                        segment,
                        symbol,
                        kind,
                        float(quote.get("last_price", np.nan)),
                        now,
                        now,
                        self._next_seq(),
                    )
                )
        return ticks

    async def poll_chain(self, underlying: UnderlyingFeed) -> ChainSnapshot | None:
        key = (underlying.symbol, underlying.expiry)
        await self.pacer.acquire(key)

        def paced(*args):
            self.pacer.started(key)
            return self.client.option_chain(*args)

        paced.__name__ = "option_chain"
        data = await self._call(
            paced, int(underlying.security_id), "IDX_I", underlying.expiry.isoformat(), call="chain"
        )
        if data is None or not isinstance(_inner(data), dict) or "oc" not in _inner(data):
            return None
        return chain_from_response(underlying, data, now=self.clock.now(), seq=self._next_seq())

    # --- the stream -------------------------------------------------------------------------

    async def _chains(self) -> None:
        while not self._closed:
            for underlying in self.underlyings:
                snapshot = await self.poll_chain(underlying)
                if snapshot is not None:
                    self._queue.put_nowait(snapshot)
            await asyncio.sleep(0.05)

    async def _ltp_by_rest(self) -> None:
        """Every ``ltp_every_s`` while the market feed is not healthy (or there is none)."""
        while not self._closed:
            began = time.monotonic()
            if self.market_feed is None or not self.market_feed.healthy:
                for tick in await self.poll_ltp():
                    self._queue.put_nowait(tick)
            await asyncio.sleep(max(self.ltp_every_s - (time.monotonic() - began), 0.01))

    async def stream(self) -> AsyncIterator[FeedItem]:
        self._queue = asyncio.Queue()
        tasks = [asyncio.create_task(self._chains()), asyncio.create_task(self._ltp_by_rest())]
        if self.market_feed is not None:
            self.market_feed.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.market_feed.connected.wait(), timeout=self.timeout_s)
        try:
            while not self._closed:
                item = await self._queue.get()
                if item is None:
                    break
                yield item
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.market_feed is not None:
                await self.market_feed.stop()


def _raise_alert(level: str, title: str, message: str) -> None:
    # The alert path lives in trading; the feed reaches it only through this callable.
    from trading.alerts import raise_alert

    raise_alert(level, "feed", title, message)
