from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from risk.charges import NoChargeRate, breakdown, charges_for_fill
from risk.models import ChargeRate

pytestmark = pytest.mark.django_db
DAY = dt.date(2026, 11, 24)


def test_a_hand_worked_nifty_option_round_trip():
    """Buy 1 lot (65) of a NIFTY call at ₹100, sell it at ₹110, one order each, on 24 Nov 2026.

    Buy, turnover 6,500:  brokerage 20.00; STT 0; exchange 6,500 × 0.03503 % = 2.27695 → 2.28;
    SEBI 6,500 × 10 / 1 crore = 0.0065 → 0.01; stamp 6,500 × 0.003 % = 0.195 → 0.20;
    GST 18 % × (20.00 + 2.28 + 0.01) = 4.0122 → 4.01.                         Total 26.50.
    Sell, turnover 7,150: brokerage 20.00; STT 7,150 × 0.15 % = 10.725 → 10.73;
    exchange 7,150 × 0.03503 % = 2.504645 → 2.50; SEBI 0.00715 → 0.01; stamp 0;
    GST 18 % × (20.00 + 2.50 + 0.01) = 4.0518 → 4.05.                          Total 37.29.
    Gross P&L 650.00, charges 63.79, net 586.21.
    """
    buy = breakdown(instrument_kind="CE", side="BUY", quantity=65, price=Decimal("100"), new_order=True, on=DAY)
    sell = breakdown(instrument_kind="CE", side="SELL", quantity=65, price=Decimal("110"), new_order=True, on=DAY)
    assert (buy.brokerage, buy.stt, buy.exchange, buy.sebi, buy.stamp, buy.gst) == tuple(
        Decimal(x) for x in ("20.00", "0.00", "2.28", "0.01", "0.20", "4.01")
    )
    assert (sell.brokerage, sell.stt, sell.exchange, sell.sebi, sell.stamp, sell.gst) == tuple(
        Decimal(x) for x in ("20.00", "10.73", "2.50", "0.01", "0.00", "4.05")
    )
    assert buy.total + sell.total == Decimal("63.79")
    assert Decimal("650.00") - (buy.total + sell.total) == Decimal("586.21")


def test_the_rate_in_force_on_the_trade_date_applies():
    before = breakdown(
        instrument_kind="FUT",
        side="SELL",
        quantity=65,
        price=Decimal("24500"),
        new_order=False,
        on=dt.date(2026, 3, 31),
    )
    after = breakdown(
        instrument_kind="FUT", side="SELL", quantity=65, price=Decimal("24500"), new_order=False, on=dt.date(2026, 4, 1)
    )
    assert before.stt == Decimal("318.50")  # 0.02 % of 15,92,500
    assert after.stt == Decimal("796.25")  # 0.05 % after the Budget 2026 increase
    assert before.brokerage == after.brokerage == Decimal("0.00")  # not the order's first fill


def test_an_admin_edit_applies_to_the_next_fill():
    rate = ChargeRate.objects.get(instrument_kind="OPTIDX", effective_from=dt.date(2026, 4, 1))
    first = charges_for_fill(
        instrument_kind="PE", side="BUY", quantity=30, price=Decimal("200"), new_order=True, on=DAY
    )
    rate.brokerage_per_order = Decimal("0")
    rate.save()
    second = charges_for_fill(
        instrument_kind="PE", side="BUY", quantity=30, price=Decimal("200"), new_order=True, on=DAY
    )
    assert first - second == Decimal("23.60")  # ₹20 brokerage and its 18 % GST


def test_missing_rates_and_unknown_kinds_are_clear_errors():
    with pytest.raises(NoChargeRate, match="No charge rates for OPTIDX in force on 2020-01-01"):
        breakdown(
            instrument_kind="CE", side="BUY", quantity=65, price=Decimal("1"), new_order=True, on=dt.date(2020, 1, 1)
        )
    with pytest.raises(ValueError, match="not 'INDEX'"):
        breakdown(instrument_kind="INDEX", side="BUY", quantity=1, price=Decimal("1"), new_order=True, on=DAY)
