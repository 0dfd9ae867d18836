"""Dhan's history endpoints for tests: answers in Dhan's documented shapes.

``POST /charts/rollingoption`` answers ``{"data": {"ce": {...}, "pe": null}}``
(or ``pe`` filled for a PUT) with parallel arrays ``open high low close iv
volume strike oi spot timestamp`` (epoch seconds, one per minute);
``POST /charts/intraday`` answers the arrays ``open high low close volume
timestamp open_interest`` at the top level. The recorded single answers live in
``fixtures/dhan_history/``; ``DhanHistoryServer`` answers a month the same way,
from a seeded market (a random-walk index, Black-Scholes option prices, and
one informed-flow burst a day: a volume spike with a price jump on the ATM
call, then rising OI), so the importer and the bar backtest run on many days
without a network.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import numpy as np

from marketdata import greeks

API = "https://api.dhan.co/v2"
FIXTURES = Path(__file__).parent / "fixtures" / "dhan_history"
IST = dt.timezone(dt.timedelta(hours=5, minutes=30))


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


class DhanHistoryServer:
    def __init__(self, *, minutes: int = 30, step: int = 50, spot: float = 24500.0, burst_minute: int = 12, seed=1):
        self.minutes, self.step, self.spot0, self.burst, self.seed = minutes, step, spot, burst_minute, seed
        self.calls: list[dict] = []
        self.holidays: set[dt.date] = set()

    # --- the market ------------------------------------------------------------------

    def _days(self, start: dt.date, end: dt.date) -> list[dt.date]:
        out, day = [], start
        while day < end:  # Dhan's toDate is exclusive
            if day.weekday() < 5 and day not in self.holidays:
                out.append(day)
            day += dt.timedelta(days=1)
        return out

    def _spots(self, day: dt.date) -> list[float]:
        rng = random.Random(f"{self.seed}:{day}")
        spot, out = self.spot0 + rng.uniform(-300, 300), []
        for _ in range(self.minutes):
            spot += rng.gauss(0, 6)
            out.append(round(spot * 20) / 20)
        return out

    def _stamp(self, day: dt.date, minute: int) -> int:
        return int(dt.datetime.combine(day, dt.time(9, 15), tzinfo=IST).timestamp()) + 60 * minute

    def _option(self, day: dt.date, minute: int, strike: float, call: bool, spot: float, atm: bool) -> dict:
        rng = random.Random(f"{self.seed}:{day}:{minute}:{strike}:{call}")
        expiry_days = 1 + (1 - day.weekday()) % 7
        t = (expiry_days + (375 - minute) / 375) / 365.0
        iv = 0.13 + rng.uniform(-0.005, 0.005)
        price = float(greeks.price(np.array(spot), np.array(strike), t, 0.065, iv, np.array(call)))
        burst = atm and call and minute == self.burst
        if burst:
            price *= 1.04
        close = max(round(price * 20) / 20, 0.05)
        base_oi = 400_000 + int(strike) % 7 * 10_000
        oi = base_oi + minute * rng.randint(0, 200)
        if atm and call and minute > self.burst:  # the informed flow's positions show in OI
            oi += 60_000 * min(minute - self.burst, 4)
        volume = rng.randint(4, 9) * 1000 * (30 if burst else 1)
        return {
            "open": round(close * 0.995 * 20) / 20,
            "high": round(close * 1.01 * 20) / 20,
            "low": round(close * 0.985 * 20) / 20,
            "close": close,
            "iv": round(iv * 100, 2),
            "volume": volume,
            "strike": strike,
            "oi": oi,
            "spot": spot,
        }

    # --- the endpoints ---------------------------------------------------------------

    def rollingoption(self, request):
        body = json.loads(request.body)
        self.calls.append(body)
        offset_text = body["strike"][3:] or "0"
        offset = int(offset_text)
        call = body["drvOptionType"] == "CALL"
        series = {k: [] for k in ("iv", "oi", "strike", "spot", "open", "high", "low", "close", "volume", "timestamp")}
        start, end = dt.date.fromisoformat(body["fromDate"]), dt.date.fromisoformat(body["toDate"])
        for day in self._days(start, end):
            for minute, spot in enumerate(self._spots(day)):
                atm = round(spot / self.step) * self.step
                strike = float(atm + offset * self.step)
                row = self._option(day, minute, strike, call, spot, offset == 0)
                for key, value in row.items():
                    series[key].append(value)
                series["timestamp"].append(self._stamp(day, minute))
        side = "ce" if call else "pe"
        return 200, {}, json.dumps({"data": {side: series, ("pe" if call else "ce"): None}})

    def intraday(self, request):
        body = json.loads(request.body)
        self.calls.append(body)
        out = {k: [] for k in ("open", "high", "low", "close", "volume", "timestamp", "open_interest")}
        if body["exchangeSegment"] != "IDX_I":  # today's futures did not trade in a past month
            return 200, {}, json.dumps(out)
        start, end = dt.date.fromisoformat(body["fromDate"]), dt.date.fromisoformat(body["toDate"])
        for day in self._days(start, end):
            for minute, spot in enumerate(self._spots(day)):
                out["open"].append(spot - 1.5)
                out["high"].append(spot + 3.0)
                out["low"].append(spot - 3.0)
                out["close"].append(spot)
                out["volume"].append(0)
                out["open_interest"].append(0)
                out["timestamp"].append(self._stamp(day, minute))
        return 200, {}, json.dumps(out)

    def install(self, mock) -> None:
        mock.add_callback("POST", f"{API}/charts/rollingoption", callback=self.rollingoption)
        mock.add_callback("POST", f"{API}/charts/intraday", callback=self.intraday)


def ist(day: dt.date, hour: int, minute: int) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute), tzinfo=IST)
