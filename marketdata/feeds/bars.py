"""Drive the engine from stored one-minute bars (imported Dhan history or recorded bars).

What the strategy sees at one-minute resolution
------------------------------------------------
Each bar covering [m, m+1 min) is delivered at its close, m + 1 min (never
earlier: the strategy cannot act on a close before it exists), as

* one ``ChainSnapshot`` per underlying and expiry with a row for every option
  that has a bar in that minute: last price = the bar's close, volume =
  cumulative for the day (the sum of the day's bar volumes, so the volume rule
  works on each bar's volume: the minute delta), OI = the bar's OI (the OI rule
  works on minute deltas), ``prev_oi`` = the first OI of the day, IV from Dhan,
  Greeks from Black-Scholes on that IV; the bid and ask are made by the fill
  model below (there is no recorded depth in a bar);
* one ``LtpTick`` per index or future bar (close), and, for an underlying with
  no index bar that minute, an index tick at the options' reported spot; these
  ticks give the engine its once-a-"second" work (order sync, timers, exits),
  which on bars runs once a minute.

What it cannot see: anything inside the minute. The mid-price jump "within
2 s" does not exist at this resolution; the jump rule compares one bar's
close with the previous bar's close (``minute_jump_pct``). A spike and a jump
inside the same minute look the same as ones 50 seconds apart; quotes, sizes
and spreads are not data; options outside ATM±10 (Dhan's range) are absent;
the strikes of a row change as ATM moves. The rules run on minute deltas with
parameters named for that resolution (``MINUTE_PARAMS``), and every report from
bars says ``"resolution": "1m bars"``.

Fills on bars (``BarFillModel``): a quote is the bar's close ± half a typical
spread, where the typical spread is the larger of ``spread_ticks`` ticks (the
instrument's own tick from the master) and ``spread_pct`` % of the close, the
half rounded up to the tick. The paper broker fills a marketable buy at that
ask (close + half spread) and a sell at that bid (close − half spread): never
better than the bar's close, so never inside the bar's range on the side that
favours us. A resting limit fills only when a later bar's quote reaches it (an
intra-minute touch does not count). The size shown at each side is a tenth of
the bar's volume (at least one lot): bigger orders fill over several minutes.
Index and futures ticks get the book's one-tick synthetic quote around the close.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

import numpy as np
from asgiref.sync import sync_to_async

from marketdata import greeks
from marketdata.feeds.base import CE, PE, ChainSnapshot, Feed, FeedItem, LtpTick
from quanthub.clock import IST, Clock, SimulatedClock

BAR = dt.timedelta(minutes=1)
RISK_FREE = 0.065
SIZE_SHARE = 10  # a side shows a tenth of the bar's volume

# Strategy parameters at one-minute resolution, and the Volume-OI parameters they set.
# Windows are counted in bars; the baselines are told the interval is 60 s.
MINUTE_PARAMS: dict[str, tuple[str, int]] = {
    "minute_volume_window": ("volume_window_s", 60),  # bars in the volume baseline (≤ 15)
    "minute_volume_spike_sigma": ("volume_spike_sigma", 0),
    "minute_volume_spike_multiple": ("volume_spike_multiple", 0),
    "minute_jump_pct": ("jump_pct", 0),  # close-to-close change of one bar, percent
    "minute_oi_sigma": ("oi_sigma", 0),
    "minute_oi_window": ("oi_window_s", 60),  # bars within which OI must confirm (≤ 30)
}
# What a minute-bar backtest runs with unless a run says otherwise: the live
# rules' thresholds over a 10-bar volume window and a 4-bar OI window.
MINUTE_DEFAULTS: dict[str, float] = {"minute_volume_window": 10, "minute_oi_window": 4}


def strategy_params_for_bars(params: dict) -> dict:
    """Turn minute-named parameters into the strategy's own (others pass through).

    The strategy keeps its code; it is told that snapshots are 60 s apart, so its
    per-interval volume and OI are per-minute deltas and its jump is bar to bar.
    """
    out = {k: v for k, v in params.items() if k not in MINUTE_PARAMS}
    merged = {**MINUTE_DEFAULTS, **{k: v for k, v in params.items() if k in MINUTE_PARAMS}}
    for name, value in merged.items():
        target, scale = MINUTE_PARAMS[name]
        out[target] = int(value) * scale if scale else value
    out["interval_s"] = 60
    return out


@dataclass(frozen=True)
class BarFillModel:
    spread_ticks: int = 2
    spread_pct: float = 0.15

    def half_spread(self, close: Decimal, tick: Decimal) -> Decimal:
        spread = max(tick * self.spread_ticks, close * Decimal(str(self.spread_pct)) / 100)
        return ((spread / 2) / tick).to_integral_value(rounding=ROUND_CEILING) * tick

    def quote(self, close: Decimal, tick: Decimal) -> tuple[Decimal, Decimal]:
        half = self.half_spread(close, tick)
        return max(close - half, tick), close + half

    def as_dict(self) -> dict:
        return {
            "model": "close ± half a typical spread; never better than the bar's close",
            "spread_ticks": self.spread_ticks,
            "spread_pct": self.spread_pct,
            "size_shown": f"1/{SIZE_SHARE} of the bar's volume, at least one lot",
        }


@dataclass(frozen=True)
class _Contract:
    security_id: str
    underlying: str
    kind: str
    strike: float | None
    expiry: dt.date | None
    lot_size: int
    tick: Decimal
    segment: str


def day_instruments(day: dt.date) -> list[str]:
    """Security ids with a bar on ``day`` (what a bar backtest of that day may trade)."""
    from marketdata.models import MinuteBar

    start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
    return sorted(
        set(
            MinuteBar.objects.filter(minute__gte=start, minute__lt=start + dt.timedelta(days=1)).values_list(
                "security_id", flat=True
            )
        )
    )


def _load(day: dt.date, until: dt.datetime | None):
    from marketdata.models import Instrument, MinuteBar

    start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
    end = start + dt.timedelta(days=1)
    bars = list(
        MinuteBar.objects.filter(minute__gte=start, minute__lt=end)
        .order_by("minute", "security_id")
        .values_list(
            "minute", "security_id", "close_paise", "volume", "oi", "iv", "spot_paise", "high_paise", "low_paise"
        )
    )
    if until is not None:
        bars = [b for b in bars if b[0] + BAR <= until]
    ids = {b[1] for b in bars}
    contracts = {}
    for i in Instrument.objects.filter(security_id__in=ids).select_related("underlying"):
        contracts[i.security_id] = _Contract(
            i.security_id,
            i.underlying.symbol,
            i.kind,
            float(i.strike) if i.strike is not None else None,
            i.expiry,
            i.lot_size,
            i.tick_size,
            i.exchange_segment,
        )
    index_ids = {}
    for symbol, sid, tick in Instrument.objects.filter(kind=Instrument.Kind.INDEX).values_list(
        "underlying__symbol", "underlying__security_id", "tick_size"
    ):
        index_ids[sid] = symbol
        # The index's own bars, on its tick from the master.
        contracts.setdefault(sid, _Contract(sid, symbol, "INDEX", None, None, 1, tick, "IDX_I"))
    return bars, contracts, index_ids


class BarFeed(Feed):
    name = "bars"

    def __init__(
        self,
        *,
        date: dt.date,
        clock: Clock | None = None,
        fill: BarFillModel | None = None,
        until: dt.datetime | None = None,
    ) -> None:
        self.date = date
        self.clock = clock
        self.fill = fill or BarFillModel()
        self.until = until
        self._closed = False
        self.seq = 0

    async def close(self) -> None:
        self._closed = True

    def items(self) -> list[FeedItem]:
        bars, contracts, index_ids = _load(self.date, self.until)
        return list(self._build(bars, contracts, index_ids))

    def _build(self, bars, contracts: dict[str, _Contract], index_ids: dict[str, str]) -> Iterator[FeedItem]:
        cumulative: dict[str, int] = defaultdict(int)
        first_oi: dict[str, int] = {}
        by_minute: dict[dt.datetime, list] = defaultdict(list)
        for bar in bars:
            by_minute[bar[0]].append(bar)
        for minute in sorted(by_minute):
            at = minute + BAR  # delivered at the bar's close
            options: dict[tuple[str, dt.date], list] = defaultdict(list)
            ticked: set[str] = set()
            spots: dict[str, float] = {}
            for _, sid, close, volume, oi, iv, spot, _high, _low in by_minute[minute]:
                c = contracts.get(sid)
                if c is None:
                    continue
                cumulative[sid] += int(volume)
                first_oi.setdefault(sid, int(oi))
                if c.kind in ("CE", "PE"):
                    options[(c.underlying, c.expiry)].append((c, close, oi, iv, int(volume)))
                    if spot:
                        spots[c.underlying] = spot / 100.0
                else:
                    self.seq += 1
                    ticked.add(c.underlying if c.kind == "INDEX" else "")
                    yield LtpTick(
                        security_id=sid,
                        exchange_segment="IDX_I" if c.kind == "INDEX" else c.segment,
                        symbol=c.underlying if c.kind == "INDEX" else f"{c.underlying}-FUT",
                        kind="INDEX" if c.kind == "INDEX" else "FUT",
                        ltp=close / 100.0,
                        exchange_time=at,
                        received_at=at,
                        seq=self.seq,
                    )
                    if c.kind == "INDEX":
                        spots[c.underlying] = close / 100.0
            for underlying, spot in sorted(spots.items()):
                if underlying in ticked:
                    continue
                sid = next((s for s, sym in index_ids.items() if sym == underlying), None)
                if sid is None:
                    continue
                self.seq += 1
                yield LtpTick(sid, "IDX_I", underlying, "INDEX", spot, at, at, self.seq)
            for (underlying, expiry), rows in sorted(options.items(), key=lambda kv: (kv[0][0], kv[0][1])):
                yield self._snapshot(
                    underlying, expiry, at, spots.get(underlying, math.nan), rows, cumulative, first_oi
                )

    def _snapshot(self, underlying, expiry, at, spot, rows, cumulative, first_oi) -> ChainSnapshot:
        n = len(rows)
        bid, ask, qty = np.empty(n), np.empty(n), np.empty(n, dtype=np.int64)
        for i, (c, close, _oi, _iv, volume) in enumerate(rows):
            b, a = self.fill.quote(Decimal(close) / 100, c.tick)
            bid[i], ask[i] = float(b), float(a)
            qty[i] = max(c.lot_size, volume // SIZE_SHARE // c.lot_size * c.lot_size)
        strike = np.array([c.strike for c, *_ in rows], dtype=np.float64)
        is_call = np.array([c.kind == "CE" for c, *_ in rows])
        iv = np.array([np.nan if r[3] is None else float(r[3]) for r in rows], dtype=np.float64)
        t = max((dt.datetime.combine(expiry, dt.time(15, 30), tzinfo=IST) - at).total_seconds(), 60.0) / (365.0 * 86400)
        with np.errstate(all="ignore"):
            g = greeks.all_greeks(spot, strike, t, RISK_FREE, iv / 100.0, is_call)
        self.seq += 1
        return ChainSnapshot(
            underlying=underlying,
            expiry=expiry,
            exchange_time=at,
            received_at=at,
            underlying_ltp=float(spot),
            security_id=np.array([c.security_id for c, *_ in rows], dtype="U20"),
            strike=strike,
            option_type=np.where(is_call, CE, PE).astype(np.int8),
            last_price=np.array([close / 100.0 for _, close, *_ in rows]),
            oi=np.array([int(r[2]) for r in rows], dtype=np.int64),
            prev_oi=np.array([first_oi[c.security_id] for c, *_ in rows], dtype=np.int64),
            volume=np.array([cumulative[c.security_id] for c, *_ in rows], dtype=np.int64),
            bid=bid,
            ask=ask,
            bid_qty=qty,
            ask_qty=qty.copy(),
            iv=iv,
            delta=np.nan_to_num(g.delta),
            gamma=np.nan_to_num(g.gamma),
            theta=np.nan_to_num(g.theta),
            vega=np.nan_to_num(g.vega),
            seq=self.seq,
        )

    async def stream(self) -> AsyncIterator[FeedItem]:
        items = await sync_to_async(self.items, thread_sensitive=True)()
        for item in items:
            if self._closed:
                return
            if isinstance(self.clock, SimulatedClock) and item.received_at > self.clock.now():
                self.clock.set(item.received_at)
            yield item
