from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.models import AuditRecord
from marketdata.book import Quote
from quanthub.clock import IST
from risk.checks import GateContext, Limits, freeze_slices
from risk.gate import RiskGate, record_refusal
from risk.models import GateRefusal
from trading.strategies.base import OrderIntent

NOW = dt.datetime(2026, 11, 24, 10, 30, tzinfo=IST)  # a Tuesday, mid-session
QUOTE = Quote("1", 99.95, 100.05, 6500, 6500, 100.0, NOW)


def intent(lots=2, *, reduces=False, side="BUY", signal="sig-1"):
    return OrderIntent(
        "vol_oi",
        "1",
        side,
        lots,
        65,
        "EXIT" if reduces else "ENTRY",
        Decimal("100.05"),
        signal_key=signal,
        reduces_exposure=reduces,
    )


def ctx(**overrides):
    base = GateContext(
        now=NOW,
        lot_size=65,
        freeze_quantity=1800,
        quote=QUOTE,
        margin_available=Decimal("1000000"),
        margin_utilised=Decimal("0"),
        margin_per_lot=Decimal("6503.25"),
    )
    return dataclasses.replace(base, **overrides)


gate = RiskGate()


@pytest.mark.parametrize(
    ("overrides", "rule", "reason"),
    [
        ({"trading_state": "HALTED"}, "trading_state", "HALTED"),
        ({"trading_state": "REDUCING"}, "trading_state", "only exposure-reducing"),
        ({"now": NOW.replace(hour=8)}, "market_hours", "outside market hours"),
        ({"now": NOW.replace(hour=15, minute=10)}, "market_hours", "no new entries after 15:00"),
        ({"event_action": "NO_NEW_ENTRIES"}, "event_day", "event day"),
        ({"event_action": "HALT"}, "event_day", "halted"),
        ({"feed_stale": True}, "feed_health", "stale"),
        ({"daily_net_pnl": Decimal("-25000")}, "daily_loss", "past the cap"),
        ({"vix_breaker": True}, "vix_breaker", "VIX breaker"),
        ({"lots_for_signal": 10}, "position_limits", "10 option lots per signal"),
        ({"lots_for_strategy": 50}, "position_limits", "50 option lots per strategy"),
        ({"margin_utilised": Decimal("400000"), "margin_available": Decimal("600000")}, "margin", "40%"),
        ({"quote": Quote("1", 99.0, 100.0, 650, 650, 99.5, NOW)}, "slippage", "spread"),
        ({"orders_last_second": 9}, "order_rate", "9/s"),
    ],
)
@pytest.mark.django_db
def test_each_rule_refuses_with_its_reason_recorded(overrides, rule, reason):
    context = ctx(**overrides)
    decision = gate.check(intent(), context)
    assert not decision.allowed and decision.rule == rule and reason in decision.reason
    record_refusal(intent(), decision, context)
    refusal = GateRefusal.objects.get()
    assert (refusal.rule, refusal.reason) == (rule, decision.reason)
    assert AuditRecord.objects.filter(action="gate.refused", payload__rule=rule).exists()


def test_a_clean_intent_passes_with_its_lots():
    decision = gate.check(intent(2), ctx())
    assert decision.allowed and decision.lots == 2 and decision.slices == (130,)


def test_lots_are_sized_down_to_what_the_limits_leave():
    decision = gate.check(intent(8), ctx(lots_for_signal=4))
    assert decision.allowed and decision.lots == 6 and "position_limits: 8→6" in decision.reason
    decision = gate.check(intent(8), ctx(margin_available=Decimal("970000"), margin_utilised=Decimal("30000")))
    # 40 % of 10,00,000 = 4,00,000; 3,70,000 left buys 56 lots: the signal limit (10) binds first.
    assert decision.lots == 8
    decision = gate.check(intent(8), ctx(margin_available=Decimal("640000"), margin_utilised=Decimal("380000")))
    assert decision.lots == 4  # 40 % of 10,20,000 = 4,08,000; (4,08,000 - 3,80,000) // 6,503.25 = 4


def test_exits_pass_every_rule_even_a_halt():
    for overrides in (
        {"trading_state": "REDUCING"},
        {"feed_stale": True},
        {"lots_for_signal": 10},
        {"daily_net_pnl": Decimal("-30000")},
        {"vix_breaker": True},
        {"event_action": "REDUCE_ONLY"},
        {"quote": Quote("1", 50.0, 100.0, 65, 65, 75.0, NOW)},
    ):
        assert gate.check(intent(2, reduces=True, side="SELL"), ctx(**overrides)).allowed, overrides
    # HALTED refuses new exposure, never a way out.
    assert gate.check(intent(2, reduces=True, side="SELL"), ctx(trading_state="HALTED")).allowed
    assert not gate.check(intent(2), ctx(trading_state="HALTED")).allowed


def test_orders_above_the_freeze_quantity_are_sliced_in_whole_lots():
    assert freeze_slices(65 * 40, 65, 1800) == (1755, 845)
    big = gate.check(intent(10), ctx(lot_size=30, freeze_quantity=600, lots_for_signal=0))
    assert big.slices == (300,)
    assert gate.check(intent(10), ctx(lot_size=65, freeze_quantity=130)).slices == (130,) * 5


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(1, 15),
            st.booleans(),
            st.sampled_from(["ACTIVE", "REDUCING", "HALTED"]),
            st.integers(-40000, 5000),
            st.integers(0, 30),
        ),
        min_size=1,
        max_size=40,
    ),
)
def test_no_sequence_of_intents_breaks_a_limit(steps):
    """Lots per signal and strategy, margin use, the loss cap and the trading
    state hold whatever intents, fills and price moves arrive."""
    limits = Limits()
    held_signal, held_strategy, utilised = 0, 0, Decimal("0")
    capital = Decimal("1000000")
    per_lot = Decimal("6503.25")
    for lots, reduces, state, pnl, price_move in steps:
        context = ctx(
            trading_state=state,
            lots_for_signal=held_signal,
            lots_for_strategy=held_strategy,
            margin_available=capital - utilised,
            margin_utilised=utilised,
            margin_per_lot=per_lot,
            daily_net_pnl=Decimal(pnl),
            limits=limits,
        )
        decision = gate.check(intent(lots, reduces=reduces, side="SELL" if reduces else "BUY"), context)
        if state == "HALTED" and not reduces:
            assert not decision.allowed
        if state == "REDUCING" and not reduces:
            assert not decision.allowed
        if Decimal(pnl) <= -limits.daily_loss_cap and not reduces:
            assert not decision.allowed
        if not decision.allowed:
            continue
        if reduces:
            closed = min(decision.lots, held_signal)
            held_signal -= closed
            held_strategy -= closed
            utilised = max(utilised - per_lot * closed, Decimal("0"))
        else:
            held_signal += decision.lots
            held_strategy += decision.lots
            utilised += per_lot * decision.lots
        assert held_signal <= limits.max_lots_per_signal
        assert held_strategy <= limits.max_lots_per_strategy
        assert utilised <= capital * limits.margin_utilisation_cap_pct / 100
        per_lot = max(per_lot + price_move, Decimal("100"))  # a price move changes the next lot's margin


@pytest.mark.django_db
def test_the_context_reads_the_active_limits_at_each_intent(demo_market):
    from marketdata.models import Instrument
    from risk.context import build_context
    from risk.models import EventDay, RiskLimits
    from risk.services import save_risk_limits

    instrument = Instrument.objects.filter(kind="CE").first()
    first = build_context(intent(), instrument=instrument, now=NOW)
    limits = RiskLimits.active()
    limits.max_lots_per_signal = 4
    save_risk_limits(limits, actor="risk1")
    EventDay.objects.create(date=NOW.date(), kind="RBI_POLICY", action="NO_NEW_ENTRIES")
    second = build_context(intent(), instrument=instrument, now=NOW)
    assert (first.limits.max_lots_per_signal, second.limits.max_lots_per_signal) == (10, 4)
    assert second.event_action == "NO_NEW_ENTRIES" and not gate.check(intent(), second).allowed
