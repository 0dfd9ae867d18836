"""The synthetic market's instrument master, in Dhan's scrip-master CSV format.

This module *is* a data source (the simulator's exchange), so the NSE facts
live here as data: lot sizes, strike steps, freeze quantities and expiry
rules. Trading logic never reads them from here; it reads the Instrument rows
loaded from the file this module writes (``manage.py load_instruments``).
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Dhan's column names (api-scrip-master.csv), plus our QH_FREEZE_QTY extension.
COLUMNS = [
    "SEM_EXM_EXCH_ID",
    "SEM_SEGMENT",
    "SEM_SMST_SECURITY_ID",
    "SEM_INSTRUMENT_NAME",
    "SEM_EXPIRY_CODE",
    "SEM_TRADING_SYMBOL",
    "SEM_LOT_UNITS",
    "SEM_CUSTOM_SYMBOL",
    "SEM_EXPIRY_DATE",
    "SEM_STRIKE_PRICE",
    "SEM_OPTION_TYPE",
    "SEM_TICK_SIZE",
    "SEM_EXPIRY_FLAG",
    "SEM_EXCH_INSTRUMENT_TYPE",
    "SEM_SERIES",
    "SM_SYMBOL_NAME",
    "QH_FREEZE_QTY",
]


@dataclass(frozen=True, slots=True)
class UnderlyingSpec:
    symbol: str
    index_security_id: str
    lot_size: int
    strike_step: int
    freeze_quantity: int
    weekly: bool  # weekly Tuesday expiries besides the monthly
    reference_spot: float
    strikes_each_side: int = 30


SYNTHETIC_MARKET: dict[str, UnderlyingSpec] = {
    "NIFTY": UnderlyingSpec("NIFTY", "13", 65, 50, 1800, True, 24500.0),
    "BANKNIFTY": UnderlyingSpec("BANKNIFTY", "25", 30, 100, 600, False, 52000.0),
}
INDIA_VIX_SECURITY_ID = "21"
# Tick sizes, in paise as Dhan writes them. Index options trade on ₹0.05; since
# April 2025 NSE index futures trade on ₹0.10 while the index is between 15,000
# and 30,000 and on ₹0.20 above 30,000 (the exchange revises the band from the
# index level, so the master carries each contract's tick as data).
OPTION_TICK_PAISE = 5
INDEX_TICK_PAISE = 5
FUTURE_TICK_BANDS_PAISE = ((15_000.0, 10), (30_000.0, 20))  # (index level from, tick)
EXPIRY_WEEKDAY = 1  # Tuesday


@dataclass(frozen=True, slots=True)
class Contract:
    security_id: str
    underlying: str
    kind: str  # INDEX | FUT | CE | PE
    strike: float | None
    expiry: dt.date | None
    lot_size: int
    freeze_quantity: int
    trading_symbol: str


def previous_trading_day(day: dt.date, holidays: set[dt.date]) -> dt.date:
    while day.weekday() >= 5 or day in holidays:
        day -= dt.timedelta(days=1)
    return day


def _last_weekday_of_month(year: int, month: int, weekday: int) -> dt.date:
    nxt = dt.date(year + (month == 12), month % 12 + 1, 1)
    last = nxt - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - weekday) % 7)


def expiries(spec: UnderlyingSpec, today: dt.date, holidays: Iterable[dt.date] = (), weeks: int = 4) -> list[dt.date]:
    """Listed expiries on ``today``: the next weekly Tuesdays (NIFTY) and the
    monthly last Tuesdays of this and the next month; an expiry on a holiday
    moves to the previous trading day."""
    holidays = set(holidays)
    nominal: set[dt.date] = set()
    for offset in range(2):
        year, month = today.year + (today.month + offset - 1) // 12, (today.month + offset - 1) % 12 + 1
        nominal.add(_last_weekday_of_month(year, month, EXPIRY_WEEKDAY))
    if spec.weekly:
        first = today + dt.timedelta(days=(EXPIRY_WEEKDAY - today.weekday()) % 7)
        nominal.update(first + dt.timedelta(weeks=i) for i in range(weeks))
    shifted = {previous_trading_day(day, holidays) for day in nominal}
    return sorted(day for day in shifted if day >= today)


def option_security_id(spec: UnderlyingSpec, expiry: dt.date, strike: float, kind: str) -> str:
    return f"{spec.index_security_id}{expiry:%y%m%d}{int(strike):06d}{0 if kind == 'CE' else 1}"


def build_master(today: dt.date, holidays: Iterable[dt.date] = ()) -> list[Contract]:
    contracts: list[Contract] = []
    for spec in SYNTHETIC_MARKET.values():
        contracts.append(Contract(spec.index_security_id, spec.symbol, "INDEX", None, None, 1, 1, spec.symbol))
        listed = expiries(spec, today, holidays)
        # The near-month future expires with the first monthly option expiry.
        fut_expiry = next((d for d in listed if d == _expiry_of_month(spec, d, holidays)), listed[0])
        contracts.append(
            Contract(
                f"9{spec.index_security_id}{fut_expiry:%y%m%d}",
                spec.symbol,
                "FUT",
                None,
                fut_expiry,
                spec.lot_size,
                spec.freeze_quantity,
                f"{spec.symbol}-{fut_expiry:%b%Y}-FUT",
            )
        )
        atm = round(spec.reference_spot / spec.strike_step) * spec.strike_step
        for expiry in listed:
            for i in range(-spec.strikes_each_side, spec.strikes_each_side + 1):
                strike = float(atm + i * spec.strike_step)
                for kind in ("CE", "PE"):
                    contracts.append(
                        Contract(
                            option_security_id(spec, expiry, strike, kind),
                            spec.symbol,
                            kind,
                            strike,
                            expiry,
                            spec.lot_size,
                            spec.freeze_quantity,
                            f"{spec.symbol}-{expiry:%d%b%Y}-{int(strike)}-{kind}",
                        )
                    )
    return contracts


def _expiry_of_month(spec: UnderlyingSpec, day: dt.date, holidays: Iterable[dt.date]) -> dt.date:
    return previous_trading_day(_last_weekday_of_month(day.year, day.month, EXPIRY_WEEKDAY), set(holidays))


def future_tick_paise(index_level: float) -> int:
    """The index future's tick (paise) for an index at ``index_level``."""
    tick = OPTION_TICK_PAISE
    for start, paise in FUTURE_TICK_BANDS_PAISE:
        if index_level >= start:
            tick = paise
    return tick


def tick_paise(contract: Contract) -> int:
    if contract.kind == "INDEX":
        return INDEX_TICK_PAISE
    if contract.kind == "FUT":
        return future_tick_paise(SYNTHETIC_MARKET[contract.underlying].reference_spot)
    return OPTION_TICK_PAISE


def _row(contract: Contract, today: dt.date) -> dict[str, str]:
    spec = SYNTHETIC_MARKET[contract.underlying]
    if contract.kind == "INDEX":
        return {
            "SEM_EXM_EXCH_ID": "NSE",
            "SEM_SEGMENT": "I",
            "SEM_SMST_SECURITY_ID": contract.security_id,
            "SEM_INSTRUMENT_NAME": "INDEX",
            "SEM_EXPIRY_CODE": "0",
            "SEM_TRADING_SYMBOL": contract.underlying,
            "SEM_LOT_UNITS": "1.0",
            "SEM_CUSTOM_SYMBOL": contract.underlying,
            "SEM_EXPIRY_DATE": "",
            "SEM_STRIKE_PRICE": "",
            "SEM_OPTION_TYPE": "",
            "SEM_TICK_SIZE": f"{tick_paise(contract):.4f}",
            "SEM_EXPIRY_FLAG": "",
            "SEM_EXCH_INSTRUMENT_TYPE": "INDEX",
            "SEM_SERIES": "X",
            "SM_SYMBOL_NAME": contract.underlying,
            "QH_FREEZE_QTY": "1",
        }
    expiry = contract.expiry
    is_monthly = expiry == _expiry_of_month(spec, expiry, ())
    return {
        "SEM_EXM_EXCH_ID": "NSE",
        "SEM_SEGMENT": "D",
        "SEM_SMST_SECURITY_ID": contract.security_id,
        "SEM_INSTRUMENT_NAME": "FUTIDX" if contract.kind == "FUT" else "OPTIDX",
        "SEM_EXPIRY_CODE": "0",
        "SEM_TRADING_SYMBOL": contract.trading_symbol,
        "SEM_LOT_UNITS": f"{contract.lot_size:.1f}",
        "SEM_CUSTOM_SYMBOL": contract.trading_symbol.replace("-", " "),
        "SEM_EXPIRY_DATE": f"{expiry:%Y-%m-%d} 14:30:00",
        "SEM_STRIKE_PRICE": "-0.01000" if contract.strike is None else f"{contract.strike:.5f}",
        "SEM_OPTION_TYPE": "XX" if contract.kind == "FUT" else contract.kind,
        "SEM_TICK_SIZE": f"{tick_paise(contract):.4f}",
        "SEM_EXPIRY_FLAG": "M" if is_monthly or contract.kind == "FUT" else "W",
        "SEM_EXCH_INSTRUMENT_TYPE": "FUTIDX" if contract.kind == "FUT" else "OP",
        "SEM_SERIES": "NA",
        "SM_SYMBOL_NAME": contract.underlying,
        "QH_FREEZE_QTY": str(contract.freeze_quantity),
    }


def write_master(path: Path, today: dt.date, holidays: Iterable[dt.date] = ()) -> int:
    contracts = build_master(today, holidays)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside it and rename: a reader never sees a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for contract in contracts:
            writer.writerow(_row(contract, today))
    os.replace(tmp, path)
    return len(contracts)
