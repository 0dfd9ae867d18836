"""Import NSE history from Dhan into the minute-bar tier.

Two data APIs, both through dhanhq 2.3:

* ``expired_options_data`` (``POST /charts/rollingoption``): one-minute OHLC,
  volume, OI, IV and spot of expired index options, by strike relative to ATM
  (ATM±10 for index options near expiry), up to 30 days per call. Dhan names
  the strike of every minute in its ``strike`` array; the contract of a minute
  is (underlying, expiry, that strike, CE/PE). Expired contracts have no Dhan
  security id any more, so each gets a stable one of ours (``history_security_id``)
  and an inactive ``Instrument`` row (lot size, tick and freeze quantity copied
  from the underlying's current master: the live engine never loads them).
* ``intraday_minute_data`` (``POST /charts/intraday``): one-minute candles with
  OI for the index and the futures of the master, up to 90 days per call.

Pacing: Dhan allows 5 data-API requests a second and 100 000 a day; the import
keeps to ``rate_per_s`` (4 by default) and stops before the daily count.
A rate-limit answer (DH-904) waits and retries. Resumable and idempotent:
every completed request range is a ``HistoryFetch`` row (empty ones too) and
is skipped by a re-run; bars are written with ``ignore_conflicts`` on
(security id, minute), so nothing is ever stored twice.

The expiry of each day's near contract is derived from the master's expiry
rule (weekday, weekly or monthly, holidays move it to the previous trading
day). NSE moved index expiries between weekdays over the years: give
``expiry_weekday`` for ranges before the current rule.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction

from marketdata.models import ExchangeHoliday, HistoryFetch, Instrument, MinuteBar, Underlying
from quanthub.clock import IST

log = logging.getLogger(__name__)

SOURCE_OPTIONS = "dhan:rollingoption"
SOURCE_CANDLES = "dhan:intraday"
DATA_RATE_PER_S = 5  # Dhan's documented data-API limits
DATA_PER_DAY = 100_000
OPTION_CHUNK_DAYS = 30
CANDLE_CHUNK_DAYS = 90
OPTION_FIELDS = ["open", "high", "low", "close", "iv", "volume", "strike", "oi", "spot"]
MAX_STRIKES = 10  # ATM±10: what Dhan serves for index options near expiry
RETRIES = 3
FATAL_CODES = {"DH-901", "DH-902"}  # bad token, no data-API subscription: nothing will work
EMPTY_CODES = {"DH-907"}  # "no data for these parameters": an empty range, recorded as such


class HistoryError(Exception):
    """The import cannot go on (authentication, subscription, daily request budget)."""


def dhan_data_client():
    """The dhanhq client history is fetched through.

    The one place the import builds its connection; point it at the shared Dhan
    connectivity module (session and token handling) when that exists.
    """
    from dhanhq import DhanContext, dhanhq  # the SDK loads only when an import runs

    if not settings.DHAN_CLIENT_ID or not settings.DHAN_ACCESS_TOKEN:
        raise HistoryError("DHAN_CLIENT_ID and DHAN_ACCESS_TOKEN (or their _FILE forms) are needed to import history")
    client = dhanhq(DhanContext(settings.DHAN_CLIENT_ID, settings.DHAN_ACCESS_TOKEN))
    client.dhan_http.timeout = max(settings.DHAN_HTTP_TIMEOUT_S, 30)  # history answers are large
    return client


class Pacer:
    """At most ``rate_per_s`` calls in any one-second window, and a daily budget."""

    def __init__(
        self,
        rate_per_s: float = 4,
        *,
        per_day: int = DATA_PER_DAY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 < rate_per_s <= DATA_RATE_PER_S:
            raise ValueError(f"rate must be above 0 and at most Dhan's {DATA_RATE_PER_S} a second")
        self.rate = rate_per_s
        self.per_day = per_day
        self.clock, self.sleep = clock, sleep
        self.last: float | None = None
        self.count = 0

    def wait(self) -> None:
        if self.count >= self.per_day:
            raise HistoryError(f"Dhan's daily data-API budget ({self.per_day} requests) is used up; re-run tomorrow")
        # Evenly spaced calls: never more than ``rate`` in any one-second window.
        spacing = 1.0 / self.rate
        now = self.clock()
        if self.last is not None and now - self.last < spacing:
            self.sleep(spacing - (now - self.last))
            now = self.clock()
        self.last = now
        self.count += 1


def _chunks(date_from: dt.date, date_to: dt.date, days: int) -> list[tuple[dt.date, dt.date]]:
    out, start = [], date_from
    while start <= date_to:
        end = min(date_to, start + dt.timedelta(days=days - 1))
        out.append((start, end))
        start = end + dt.timedelta(days=1)
    return out


def near_expiry(underlying: Underlying, day: dt.date, holidays: set[dt.date], weekday: int | None = None) -> dt.date:
    """The nearest listed expiry on or after ``day`` under the underlying's rule."""
    wd = underlying.expiry_weekday if weekday is None else weekday

    def shift(d: dt.date) -> dt.date:
        while d in holidays or d.weekday() >= 5:
            d -= dt.timedelta(days=1)
        return d

    if underlying.expiry_rule == Underlying.ExpiryRule.WEEKLY_AND_MONTHLY:
        candidate = day + dt.timedelta(days=(wd - day.weekday()) % 7)
        while shift(candidate) < day:
            candidate += dt.timedelta(days=7)
        return shift(candidate)
    year, month = day.year, day.month
    while True:
        last = dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)
        candidate = shift(last - dt.timedelta(days=(last.weekday() - wd) % 7))
        if candidate >= day:
            return candidate
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def history_security_id(underlying: Underlying, expiry: dt.date, strike: Decimal, kind: str) -> str:
    """A stable id for an expired contract: H, the index's Dhan id, expiry, C/P, strike."""
    strike_text = f"{strike.normalize():f}".replace(".", "d")
    return f"H{underlying.security_id}{expiry:%y%m%d}{kind[0]}{strike_text}"[:20]


@dataclass
class ImportSummary:
    requests: int = 0
    skipped: int = 0  # ranges fetched by an earlier run
    empty: int = 0
    failed: list[str] = field(default_factory=list)
    bars_written: int = 0
    bars_seen: int = 0
    contracts: int = 0


def _paise(value: Any) -> int:
    return int((Decimal(str(value)) * 100).to_integral_value())


class HistoryImporter:
    def __init__(
        self,
        underlying: Underlying,
        *,
        client=None,
        pacer: Pacer | None = None,
        strikes: int = MAX_STRIKES,
        expiry_weekday: int | None = None,
        progress: Callable[[str], None] | None = None,
        retry_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0 <= strikes <= MAX_STRIKES:
            raise ValueError(f"strikes must be 0…{MAX_STRIKES} (Dhan serves ATM±{MAX_STRIKES})")
        self.underlying = underlying
        self.client = client
        self.pacer = pacer or Pacer()
        self.strikes = strikes
        self.expiry_weekday = expiry_weekday
        self.progress = progress or (lambda note: None)
        self.retry_sleep = retry_sleep
        self.summary = ImportSummary()
        self.template = (
            Instrument.objects.filter(underlying=underlying, kind__in=[Instrument.Kind.CE, Instrument.Kind.PE])
            .order_by("-is_active", "-expiry")
            .first()
        )
        if self.template is None:
            raise HistoryError(
                f"No {underlying.symbol} option in the instrument master: load it first (manage.py load_instruments)"
            )
        self.holidays = set(ExchangeHoliday.objects.filter(exchange="NSE").values_list("date", flat=True))
        self._instruments: dict[str, Instrument] = {}

    # --- the plan ---------------------------------------------------------------------

    def option_requests(self, date_from: dt.date, date_to: dt.date) -> list[dict[str, Any]]:
        flag = "WEEK" if self.underlying.expiry_rule == Underlying.ExpiryRule.WEEKLY_AND_MONTHLY else "MONTH"
        offsets = ["ATM"] + [f"ATM{sign}{n}" for n in range(1, self.strikes + 1) for sign in ("+", "-")]
        out = []
        for start, end in _chunks(date_from, date_to, OPTION_CHUNK_DAYS):
            for strike in offsets:
                for side in ("CALL", "PUT"):
                    out.append(
                        {
                            "kind": "option",
                            "key": f"{self.underlying.symbol}:{flag}:{strike}:{side}",
                            "from": start,
                            "to": end,
                            "args": {
                                "security_id": int(self.underlying.security_id),
                                "exchange_segment": "NSE_FNO",
                                "instrument_type": "OPTIDX",
                                "expiry_flag": flag,
                                "expiry_code": 1,
                                "strike": strike,
                                "drv_option_type": side,
                                "required_data": OPTION_FIELDS,
                                "from_date": start.isoformat(),
                                "to_date": (end + dt.timedelta(days=1)).isoformat(),
                                "interval": 1,
                            },
                        }
                    )
        return out

    def candle_requests(self, date_from: dt.date, date_to: dt.date) -> list[dict[str, Any]]:
        targets = [(self.underlying.security_id, "IDX_I", "INDEX", self.underlying.symbol)]
        futures = Instrument.objects.filter(
            underlying=self.underlying, kind=Instrument.Kind.FUT, expiry__gte=date_from
        ).order_by("expiry")
        targets += [(f.security_id, f.exchange_segment, "FUTIDX", f.trading_symbol) for f in futures]
        out = []
        for start, end in _chunks(date_from, date_to, CANDLE_CHUNK_DAYS):
            for security_id, segment, instrument, symbol in targets:
                out.append(
                    {
                        "kind": "candle",
                        "key": f"{security_id}:{segment}",
                        "symbol": symbol,
                        "security_id": security_id,
                        "from": start,
                        "to": end,
                        "args": {
                            "security_id": security_id,
                            "exchange_segment": segment,
                            "instrument_type": instrument,
                            "from_date": start.isoformat(),
                            "to_date": (end + dt.timedelta(days=1)).isoformat(),
                            "interval": 1,
                            "oi": True,
                        },
                    }
                )
        return out

    def plan(self, date_from: dt.date, date_to: dt.date) -> list[dict[str, Any]]:
        return self.candle_requests(date_from, date_to) + self.option_requests(date_from, date_to)

    # --- running it -------------------------------------------------------------------

    def run(
        self, date_from: dt.date, date_to: dt.date, *, on_step: Callable[[dict], None] | None = None
    ) -> ImportSummary:
        done = {
            (f.source, f.key, f.date_from, f.date_to)
            for f in HistoryFetch.objects.filter(date_from__gte=date_from, date_to__lte=date_to)
        }
        for request in self.plan(date_from, date_to):
            source = SOURCE_OPTIONS if request["kind"] == "option" else SOURCE_CANDLES
            if (source, request["key"], request["from"], request["to"]) in done:
                self.summary.skipped += 1
            else:
                self._fetch(request, source)
            if on_step is not None:
                on_step(request)
        return self.summary

    def _call(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """One request, paced; returns Dhan's body, {} for "no data", None for a failure."""
        method = self.client.expired_options_data if request["kind"] == "option" else self.client.intraday_minute_data
        for attempt in range(1, RETRIES + 1):
            self.pacer.wait()
            self.summary.requests += 1
            response = method(**request["args"])
            if response.get("status") == "success":
                return response.get("data") or {}
            remarks = response.get("remarks")
            code = remarks.get("error_code") if isinstance(remarks, dict) else None
            message = remarks.get("error_message") if isinstance(remarks, dict) else str(remarks)
            if code in FATAL_CODES:
                raise HistoryError(f"Dhan refused the data request ({code}: {message})")
            if code in EMPTY_CODES:
                return {}
            log.warning(
                "history request failed",
                extra={"key": request["key"], "code": code, "attempt": attempt, "error": str(message)[:200]},
            )
            if attempt < RETRIES:
                self.retry_sleep(2.0 * attempt if code == "DH-904" else 0.5 * attempt)
        return None

    def _fetch(self, request: dict[str, Any], source: str) -> None:
        body = self._call(request)
        if body is None:
            self.summary.failed.append(f"{request['key']} {request['from']}…{request['to']}")
            return
        parse = self._option_bars if request["kind"] == "option" else self._candle_bars
        rows = parse(body, request)
        in_range = [b for b in rows if request["from"] <= b.minute.astimezone(IST).date() <= request["to"]]
        with transaction.atomic():
            before = (
                MinuteBar.objects.filter(security_id__in={b.security_id for b in in_range}).count() if in_range else 0
            )
            MinuteBar.objects.bulk_create(in_range, batch_size=2000, ignore_conflicts=True)
            after = (
                MinuteBar.objects.filter(security_id__in={b.security_id for b in in_range}).count() if in_range else 0
            )
            HistoryFetch.objects.get_or_create(
                source=source,
                key=request["key"],
                date_from=request["from"],
                date_to=request["to"],
                defaults={"bars": len(in_range)},
            )
        self.summary.bars_seen += len(in_range)
        self.summary.bars_written += after - before
        if not in_range:
            self.summary.empty += 1

    # --- Dhan's shapes ------------------------------------------------------------------

    @staticmethod
    def _series(body: dict[str, Any], name: str, n: int) -> list:
        values = body.get(name) or []
        return list(values) + [None] * (n - len(values))

    def _candle_bars(self, body: dict[str, Any], request: dict[str, Any]) -> list[MinuteBar]:
        stamps = body.get("timestamp") or []
        n = len(stamps)
        o, h, lo, c = (self._series(body, k, n) for k in ("open", "high", "low", "close"))
        volume, oi = self._series(body, "volume", n), self._series(body, "open_interest", n)
        return [
            MinuteBar(
                minute=dt.datetime.fromtimestamp(int(stamps[i]), tz=IST).replace(second=0, microsecond=0),
                security_id=request["security_id"],
                symbol=request["symbol"][:40],
                open_paise=_paise(o[i]),
                high_paise=_paise(h[i]),
                low_paise=_paise(lo[i]),
                close_paise=_paise(c[i]),
                volume=int(volume[i] or 0),
                oi=int(oi[i] or 0),
                source=SOURCE_CANDLES,
            )
            for i in range(n)
            if None not in (o[i], h[i], lo[i], c[i])
        ]

    def _option_bars(self, body: dict[str, Any], request: dict[str, Any]) -> list[MinuteBar]:
        data = body.get("data") or {}
        side = "ce" if request["args"]["drv_option_type"] == "CALL" else "pe"
        series = data.get(side) or {}
        stamps = series.get("timestamp") or []
        n = len(stamps)
        cols = {k: self._series(series, k, n) for k in OPTION_FIELDS}
        kind = Instrument.Kind.CE if side == "ce" else Instrument.Kind.PE
        bars = []
        for i in range(n):
            if None in (cols["open"][i], cols["high"][i], cols["low"][i], cols["close"][i], cols["strike"][i]):
                continue
            minute = dt.datetime.fromtimestamp(int(stamps[i]), tz=IST).replace(second=0, microsecond=0)
            strike = Decimal(str(cols["strike"][i]))
            instrument = self._contract(
                near_expiry(self.underlying, minute.date(), self.holidays, self.expiry_weekday), strike, kind
            )
            bars.append(
                MinuteBar(
                    minute=minute,
                    security_id=instrument.security_id,
                    symbol=instrument.trading_symbol[:40],
                    open_paise=_paise(cols["open"][i]),
                    high_paise=_paise(cols["high"][i]),
                    low_paise=_paise(cols["low"][i]),
                    close_paise=_paise(cols["close"][i]),
                    volume=int(cols["volume"][i] or 0),
                    oi=int(cols["oi"][i] or 0),
                    iv=float(cols["iv"][i]) if cols["iv"][i] is not None else None,
                    spot_paise=_paise(cols["spot"][i]) if cols["spot"][i] is not None else None,
                    source=SOURCE_OPTIONS,
                )
            )
        return bars

    def _contract(self, expiry: dt.date, strike: Decimal, kind: str) -> Instrument:
        security_id = history_security_id(self.underlying, expiry, strike, kind)
        found = self._instruments.get(security_id)
        if found is None:
            t = self.template
            found, created = Instrument.objects.get_or_create(
                exchange_segment=t.exchange_segment,
                security_id=security_id,
                defaults={
                    "underlying": self.underlying,
                    "kind": kind,
                    "strike": strike,
                    "expiry": expiry,
                    "lot_size": t.lot_size,
                    "tick_size": t.tick_size,
                    "freeze_quantity": t.freeze_quantity,
                    "trading_symbol": f"{self.underlying.symbol}-{expiry:%d%b%Y}-{strike.normalize():f}-{kind}",
                    "is_active": False,  # history: never loaded by the live engine
                },
            )
            self.summary.contracts += int(created)
            self._instruments[security_id] = found
        return found


def history_days(underlying: str | None = None) -> list[dt.date]:
    """Days with imported option bars (for the backtest's ``--source bars``)."""
    qs = MinuteBar.objects.filter(source=SOURCE_OPTIONS)
    if underlying:
        qs = qs.filter(security_id__in=Instrument.objects.filter(underlying__symbol=underlying).values("security_id"))
    return sorted({m.astimezone(IST).date() for m in qs.values_list("minute", flat=True).distinct()})


def has_bars(day: dt.date) -> bool:
    start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
    return MinuteBar.objects.filter(
        source=SOURCE_OPTIONS, minute__gte=start, minute__lt=start + dt.timedelta(days=1)
    ).exists()
