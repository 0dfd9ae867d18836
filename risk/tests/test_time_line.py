"""A person's change in the admin, after the demo engine ran on its simulated clock,
is written on the account's time line (the engine's last market time carried on),
so it sorts with what the engine wrote rather than days after it."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from audit.models import AuditRecord
from quanthub.clock import IST
from risk.models import RiskLimits, TradingState
from risk.services import save_risk_limits, set_trading_state
from trading.models import EngineHeartbeat

pytestmark = pytest.mark.django_db
MARKET = dt.datetime(2026, 11, 23, 10, 30, tzinfo=IST)  # the demo's simulated session, days behind the wall


@pytest.fixture
def demo_engine_ran():
    now = timezone.now()
    EngineHeartbeat.objects.create(
        engine_id="demo", role=EngineHeartbeat.Role.ACTIVE, started_at=now, beat_at=now, market_time=MARKET
    )


def _near_market(at: dt.datetime) -> bool:
    return abs((at - MARKET).total_seconds()) < 60


def test_a_risk_managers_limit_change_and_halt_are_on_the_engines_time_line(demo_engine_ran):
    limits = RiskLimits.active()
    limits.daily_loss_cap = Decimal("30000")
    limits.is_active = True
    save_risk_limits(limits, actor="user:risk1")
    set_trading_state(TradingState.State.HALTED, actor="user:risk1", reason="a drill")
    changed = AuditRecord.objects.get(action__in=["risk_limits.changed", "risk_limits.created"])
    halted = AuditRecord.objects.get(action="trading_state.changed")
    assert _near_market(changed.created_at) and _near_market(halted.created_at)
    assert _near_market(TradingState.objects.get(account="default").changed_at)


def test_with_no_engine_ever_run_it_is_the_wall_clock():
    set_trading_state(TradingState.State.HALTED, actor="user:risk1", reason="a drill")
    record = AuditRecord.objects.get(action="trading_state.changed")
    assert abs((record.created_at - timezone.now()).total_seconds()) < 60
