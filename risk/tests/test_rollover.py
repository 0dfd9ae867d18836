"""Sessions roll over: an expired daily-loss HALT returns to ACTIVE at the session's open."""

from __future__ import annotations

import datetime as dt

import pytest

from audit import actors
from audit.models import AuditRecord
from quanthub.clock import IST
from risk.breakers import next_session_open, session_open_after, trip
from risk.models import BreakerTrip, TradingState
from risk.services import roll_over_session, set_trading_state
from trading.models import ReconciliationBreak

pytestmark = pytest.mark.django_db

FRIDAY_CLOSE = dt.datetime(2026, 11, 27, 15, 0, tzinfo=IST)
MONDAY_OPEN = dt.datetime(2026, 11, 30, 9, 15, tzinfo=IST)


def halt_for_daily_loss(account="default"):
    trip("daily_loss", "daily net loss ₹50000 reached the cap", at=FRIDAY_CLOSE, account=account)
    set_trading_state(
        "HALTED",
        actor="breaker:daily_loss",
        reason="daily net loss ₹50000 reached the cap",
        account=account,
        halted_until=next_session_open(FRIDAY_CLOSE),
    )


def test_the_next_session_open_skips_the_weekend():
    assert next_session_open(FRIDAY_CLOSE) == MONDAY_OPEN
    assert session_open_after(MONDAY_OPEN - dt.timedelta(minutes=5)) == MONDAY_OPEN
    assert session_open_after(MONDAY_OPEN) == MONDAY_OPEN + dt.timedelta(days=1)


def test_an_expired_daily_loss_halt_returns_to_active_with_an_audit_record():
    halt_for_daily_loss()
    with actors.acting_as(actors.engine("e1")):  # the engine's session-open check
        assert roll_over_session(account="default", now=MONDAY_OPEN) is None
    state = TradingState.objects.get(account="default")
    assert (state.state, state.actor, state.halted_until) == ("ACTIVE", "engine:e1", None)
    assert state.reason.startswith("session open: ")
    record = AuditRecord.objects.filter(action="trading_state.changed", actor="engine:e1").get()
    assert record.subject == "account:default" and record.payload["old"] == "HALTED"
    assert BreakerTrip.objects.get(breaker="daily_loss").cleared_by == "engine:e1"


def test_before_its_time_the_halt_stays():
    halt_for_daily_loss()
    assert roll_over_session(now=MONDAY_OPEN - dt.timedelta(seconds=1)) == "halted until a later session"
    assert TradingState.objects.get(account="default").state == "HALTED"


def test_an_open_reconciliation_break_keeps_the_halt():
    halt_for_daily_loss()
    ReconciliationBreak.objects.create(account="default", kind="POSITION_MISMATCH", key="1001")
    assert roll_over_session(now=MONDAY_OPEN) == "1 open reconciliation break(s)"
    assert TradingState.objects.get(account="default").state == "HALTED"
    assert not AuditRecord.objects.filter(action="trading_state.changed", payload__new="ACTIVE").exists()


def test_a_risk_managers_halt_is_never_lifted_by_the_clock():
    halt_for_daily_loss()
    set_trading_state("HALTED", actor="risk1", reason="desk decision: stay out today", account="default")
    assert TradingState.objects.get(account="default").halted_until is None
    assert roll_over_session(now=MONDAY_OPEN + dt.timedelta(days=3)) is None
    assert TradingState.objects.get(account="default").state == "HALTED"


def test_other_accounts_are_left_alone():
    halt_for_daily_loss("backtest-9")
    halt_for_daily_loss("default")
    roll_over_session(account="backtest-9", now=MONDAY_OPEN)
    assert TradingState.objects.get(account="backtest-9").state == "ACTIVE"
    assert TradingState.objects.get(account="default").state == "HALTED"
