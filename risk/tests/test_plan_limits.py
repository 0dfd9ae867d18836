"""Option lots, hedge lots, their margin caps and the spread rule, at their boundaries."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from marketdata.book import Quote
from risk.checks import Limits
from risk.slippage import check_slippage
from risk.tests.test_gate import NOW, ctx, gate
from trading.strategies.base import OrderIntent


def _intent(purpose: str, lots: int) -> OrderIntent:
    sid = "F1" if purpose == "HEDGE" else "1"
    return OrderIntent("vol_oi", sid, "SELL" if purpose == "HEDGE" else "BUY", lots, 65, purpose, None, "sig-1")


@pytest.mark.parametrize(("held", "allowed", "lots"), [(1, True, 8), (2, True, 8), (3, True, 7), (10, False, 0)])
def test_a_scale_up_counts_option_lots_only(held, allowed, lots):
    # Two option lots held plus a one-lot hedge: the scale of 8 passes whole (2 + 8 = 10).
    decision = gate.check(_intent("SCALE", 8), ctx(lots_for_signal=held, hedge_lots_for_signal=5))
    assert (decision.allowed, decision.lots) == (allowed, lots)


@pytest.mark.parametrize(("hedged", "allowed", "lots"), [(5, True, 4), (6, True, 4), (7, True, 3), (10, False, 0)])
def test_hedges_have_their_own_lots_per_signal(hedged, allowed, lots):
    decision = gate.check(_intent("HEDGE", 4), ctx(lots_for_signal=10, hedge_lots_for_signal=hedged))
    assert (decision.allowed, decision.lots) == (allowed, lots)
    if not allowed:
        assert decision.reason == "10 hedge lots per signal reached"


def test_a_hedge_has_its_own_margin_cap():
    # 40 % of ₹10 L is used: an option lot is refused, a hedge lot (cap 90 %) passes.
    used = {
        "margin_available": Decimal("600000"),
        "margin_utilised": Decimal("400000"),
        "margin_per_lot": Decimal("200000"),
    }
    assert gate.check(_intent("SCALE", 1), ctx(**used)).rule == "margin"
    hedge = gate.check(_intent("HEDGE", 4), ctx(**used))
    assert hedge.allowed and hedge.lots == 2  # (900 000 − 400 000) // 200 000
    full = dict(used, margin_utilised=Decimal("900000"), margin_available=Decimal("100000"))
    refused = gate.check(_intent("HEDGE", 1), ctx(**full))
    assert refused.rule == "margin" and "hedge margin" in refused.reason


@pytest.mark.parametrize(
    ("bid", "ask", "ok"),
    [
        # mid 100.00: spread 0.30 is exactly 0.3 %; 0.3005 % of mid needs a mid of 99.8336…
        ("99.85", "100.15", True),
        ("99.70", "100.00", False),  # 0.30 / 99.85 = 0.30045 %: above, though it rounds to 0.300
        ("99.90", "100.15", True),
    ],
)
def test_the_spread_rule_compares_the_unrounded_spread(bid, ask, ok):
    limits = dataclasses.replace(Limits(), max_slippage_per_leg=Decimal("1"))
    quote = Quote("1", float(bid), float(ask), 6500, 6500, float(bid), NOW)
    verdict = check_slippage("BUY", 65, quote, limits, tick=Decimal("0.05"))
    assert verdict.ok is ok
    if not ok:
        assert "0.3005% of mid exceeds 0.300%" in verdict.reason
