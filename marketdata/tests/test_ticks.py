"""Prices onto the instrument's tick: the one boundary function, and the master's tick data."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketdata import synthetic
from marketdata.models import Instrument
from marketdata.ticks import DOWN, UP, is_on_tick, marketable, price_on_tick, to_tick

TICKS = st.sampled_from([Decimal("0.05"), Decimal("0.10"), Decimal("0.20")])


def test_the_float_that_was_rejected_goes_onto_the_futures_tick():
    assert to_tick(52406.299999999996, Decimal("0.20"), DOWN) == Decimal("52406.20")
    assert to_tick(52406.299999999996, Decimal("0.20"), UP) == Decimal("52406.40")
    assert to_tick(24510.05, Decimal("0.10")) in (Decimal("24510.00"), Decimal("24510.10"))


@given(value=st.floats(0.05, 100_000, allow_nan=False), tick=TICKS)
def test_every_price_is_an_exact_multiple_of_its_tick_and_a_marketable_one_still_crosses(value, tick):
    class Inst:
        tick_size = tick

    for rounding in ("nearest", DOWN, UP):
        price = to_tick(value, tick, rounding)
        assert isinstance(price, Decimal) and is_on_tick(price, tick)
        assert abs(price - Decimal(str(value))) <= tick
    sell, buy = marketable(Inst, "SELL", value), marketable(Inst, "BUY", value)
    assert sell <= Decimal(str(value)) or sell == tick  # at or through the bid
    assert buy >= Decimal(str(value))  # at or through the ask


def test_no_market_no_price():
    class Inst:
        tick_size = Decimal("0.05")

    assert marketable(Inst, "SELL", None) is None and marketable(Inst, "BUY", 0) is None


@pytest.mark.parametrize(("level", "paise"), [(14_999, 5), (15_000, 10), (24_500, 10), (30_000, 20), (52_000, 20)])
def test_index_futures_tick_by_index_level(level, paise):
    assert synthetic.future_tick_paise(level) == paise


def test_the_synthetic_master_carries_each_contracts_tick(demo_market):
    ticks = dict(Instrument.objects.filter(kind="FUT").values_list("underlying__symbol", "tick_size"))
    assert ticks == {"NIFTY": Decimal("0.10"), "BANKNIFTY": Decimal("0.20")}
    options = set(Instrument.objects.filter(kind__in=["CE", "PE"]).values_list("tick_size", flat=True))
    assert options == {Decimal("0.05")}
    future = Instrument.objects.filter(kind="FUT", underlying__symbol="BANKNIFTY").first()
    assert price_on_tick(future, 52406.3) == Decimal("52406.40")
