"""The live feed: Dhan's option chain every 3 s per underlying (Dhan allows one
request per 3 s per underlying and expiry) and LTP of the indices, their
futures and India VIX every second, converted into the same ``ChainSnapshot``
and ``LtpTick`` the simulator yields. The dhanhq calls are blocking, so they
run in a thread with a timeout; a failed poll is logged and skipped (feed
health goes stale and the risk gate stops entries), never raised into the loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from marketdata.feeds.base import CE, PE, ChainSnapshot, Feed, FeedItem, LtpTick
from quanthub.clock import Clock, RealClock

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
    ):
        self.client = client
        self.underlyings = underlyings
        self.clock = clock or RealClock()
        self.timeout_s = timeout_s
        self.chain_every_s = chain_every_s
        self.ltp_every_s = ltp_every_s
        self._closed = False
        self._seq = 0
        self.failures = 0

    @classmethod
    def from_options(cls, *, clock=None, client=None, **ignored) -> DhanFeed:
        from django.conf import settings

        from marketdata.models import Instrument, Underlying

        if client is None:
            from trading.brokers.dhan import contained_tradehull
            from trading.brokers.tokens import current_token

            client = contained_tradehull(settings.DHAN_CLIENT_ID, current_token()).Dhan
        clock = clock or RealClock()
        feeds = []
        for underlying in Underlying.objects.filter(is_active=True, symbol__in=["NIFTY", "BANKNIFTY"]):
            options = Instrument.objects.filter(
                underlying=underlying, kind__in=["CE", "PE"], is_active=True, expiry__gte=clock.today()
            )
            expiry = options.order_by("expiry").values_list("expiry", flat=True).first()
            if expiry is None:
                continue
            future = Instrument.objects.filter(underlying=underlying, kind="FUT", is_active=True).order_by("expiry")
            ids = {
                (float(i.strike), CE if i.kind == "CE" else PE): i.security_id for i in options.filter(expiry=expiry)
            }
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
        return cls(client=client, underlyings=feeds, clock=clock, timeout_s=settings.DHAN_HTTP_TIMEOUT_S)

    async def close(self) -> None:
        self._closed = True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def _call(self, fn, *args):
        try:
            response = await asyncio.wait_for(asyncio.to_thread(fn, *args), timeout=self.timeout_s + 1.0)
        except TimeoutError:
            response = {"status": "failure", "remarks": "timed out"}
        if not isinstance(response, dict) or response.get("status") != "success":
            self.failures += 1
            log.warning(
                "dhan feed poll failed", extra={"call": fn.__name__, "remarks": str(response.get("remarks"))[:200]}
            )
            return None
        return response.get("data")

    async def poll_ltp(self) -> list[LtpTick]:
        request: dict[str, list[int]] = {
            "IDX_I": [int(u.security_id) for u in self.underlyings] + [int(INDIA_VIX_SECURITY_ID)]
        }
        futures = [int(u.future_security_id) for u in self.underlyings if u.future_security_id]
        if futures:
            request["NSE_FNO"] = futures
        data = await self._call(self.client.ticker_data, request)
        if data is None:
            return []
        now = self.clock.now()
        names = {u.security_id: (u.symbol, "INDEX") for u in self.underlyings}
        names.update({u.future_security_id: (f"{u.symbol}-FUT", "FUT") for u in self.underlyings})
        names[INDIA_VIX_SECURITY_ID] = ("INDIAVIX", "VIX")
        ticks = []
        for segment, quotes in _inner(data).items():
            for sid, quote in (quotes or {}).items():
                symbol, kind = names.get(str(sid), (str(sid), "INDEX"))
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
        data = await self._call(
            self.client.option_chain, int(underlying.security_id), "IDX_I", underlying.expiry.isoformat()
        )
        if data is None:
            return None
        return chain_from_response(underlying, data, now=self.clock.now(), seq=self._next_seq())

    async def stream(self) -> AsyncIterator[FeedItem]:
        started = time.monotonic()
        tick = 0
        while not self._closed:
            for item in await self.poll_ltp():
                yield item
            # One chain request per underlying every chain_every_s, spread across the seconds.
            for index, underlying in enumerate(self.underlyings):
                if tick % int(self.chain_every_s) == index % int(self.chain_every_s):
                    snapshot = await self.poll_chain(underlying)
                    if snapshot is not None:
                        yield snapshot
            tick += 1
            delay = started + tick * self.ltp_every_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
