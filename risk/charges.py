"""Indian F&O charges, for net P&L.

Per fill: brokerage (once per executed order, on its first fill), STT on the
sell side, exchange transaction charges, SEBI turnover fee, stamp duty on the
buy side, and GST on brokerage + exchange charges + SEBI fee. Each component
is rounded to the paisa half-up, as contract notes show them. Rates come from
the versioned ``ChargeRate`` table (the row in force on the trade date).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from quanthub.sql import Statement
from risk.models import ChargeRate

PAISA = Decimal("0.01")
HUNDRED = Decimal("100")
CRORE = Decimal("10000000")
KIND = {"CE": ChargeRate.Kind.OPTIDX, "PE": ChargeRate.Kind.OPTIDX, "FUT": ChargeRate.Kind.FUTIDX}


class NoChargeRate(LookupError):
    pass


@dataclass(frozen=True, slots=True)
class Charges:
    brokerage: Decimal
    stt: Decimal
    exchange: Decimal
    sebi: Decimal
    stamp: Decimal
    gst: Decimal

    @property
    def total(self) -> Decimal:
        return self.brokerage + self.stt + self.exchange + self.sebi + self.stamp + self.gst


def _round(value: Decimal) -> Decimal:
    return value.quantize(PAISA, rounding=ROUND_HALF_UP)


# Compiled once (see quanthub.sql.Statement): the read itself stays at every fill.
_RATE = Statement(
    lambda kind, on: ChargeRate.objects.filter(instrument_kind=kind, effective_from__lte=on).order_by(
        "-effective_from"
    )[:1],
    str,
    dt.date,
)


def rate_for(kind: str, on: dt.date) -> ChargeRate:
    # Read at every fill (a few a second at most): an admin edit applies to the
    # next fill, and a rolled-back edit never lingers in a cache.
    found = _RATE.objects(kind, on)
    if not found:
        raise NoChargeRate(f"No charge rates for {kind} in force on {on}; add them in the admin")
    return found[0]


def breakdown(
    *, instrument_kind: str, side: str, quantity: int, price: Decimal, new_order: bool, on: dt.date
) -> Charges:
    if instrument_kind not in KIND:
        raise ValueError(f"Charges are defined for CE, PE and FUT, not {instrument_kind!r}")
    rate = rate_for(KIND[instrument_kind], on)
    turnover = Decimal(quantity) * Decimal(price)
    brokerage = _round(rate.brokerage_per_order) if new_order else Decimal("0.00")
    stt = _round(turnover * rate.stt_sell_pct / HUNDRED) if side == "SELL" else Decimal("0.00")
    exchange = _round(turnover * rate.exchange_txn_pct / HUNDRED)
    sebi = _round(turnover * rate.sebi_per_crore / CRORE)
    stamp = _round(turnover * rate.stamp_buy_pct / HUNDRED) if side == "BUY" else Decimal("0.00")
    gst = _round((brokerage + exchange + sebi) * rate.gst_pct / HUNDRED)
    return Charges(brokerage, stt, exchange, sebi, stamp, gst)


def charges_for_fill(
    *, instrument_kind: str, side: str, quantity: int, price: Decimal, new_order: bool, on: dt.date
) -> Decimal:
    return breakdown(
        instrument_kind=instrument_kind, side=side, quantity=quantity, price=price, new_order=new_order, on=on
    ).total
