"""The engine follows admin changes of its strategies and risk limits without asking
the database at every simulated second (``trading.engine.config``)."""

from __future__ import annotations

import datetime as dt

import pytest

from risk.models import RiskLimits
from risk.services import save_risk_limits
from trading.conftest import sim_engine
from trading.engine import config
from trading.models import Strategy
from trading.services import save_strategy

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def engine(enabled):
    engine, _ = sim_engine(dt.time(9, 15), dt.time(9, 16))
    engine._load()
    engine._follow_config()  # the first look
    return engine


def _limits(**fields) -> RiskLimits:
    limits = RiskLimits.active()
    for name, value in fields.items():
        setattr(limits, name, value)
    limits.is_active = True
    return save_risk_limits(limits, actor="user:risk1")


def test_without_a_change_the_engine_does_not_ask_again_within_the_wall_second(engine, django_assert_num_queries):
    with django_assert_num_queries(0):
        engine._follow_config()
    assert engine._limits_fresh


def test_limits_saved_in_the_admin_apply_at_the_next_look_within_the_same_wall_second(engine):
    before = engine._limits.max_lots_per_signal
    _limits(max_lots_per_signal=before - 1)
    engine._follow_config()
    assert engine._limits.max_lots_per_signal == before - 1
    assert engine._limits_fresh


def test_a_strategy_saved_in_the_admin_applies_at_the_next_look(engine):
    row = Strategy.objects.get(key="vol_oi")
    row.params = {**row.params, "probe_lots": 3}
    save_strategy(row, actor="user:risk1", changed=["params"])
    engine._follow_config()
    [loaded] = [s for s in engine.strategies if s.key == "vol_oi"]
    assert loaded.strategy.config.probe_lots == 3


def test_a_change_made_without_a_signal_applies_within_the_recheck_window(engine, django_assert_num_queries):
    """What another process writes (or an ``update()``, as the dashboard's switch makes)
    moves nothing in this process: it is seen at the next wall-second look."""
    limits = RiskLimits.active()
    before = limits.max_lots_per_signal
    RiskLimits.objects.filter(pk=limits.pk).update(max_lots_per_signal=before - 1, version=limits.version + 1)
    Strategy.objects.filter(key="vol_oi").update(enabled=False, version=Strategy.objects.get(key="vol_oi").version + 1)
    with django_assert_num_queries(0):
        engine._follow_config()
    assert engine._limits.max_lots_per_signal == before
    generation, looked = engine._config_seen
    engine._config_seen = (generation, looked - config.RECHECK_S - 0.01)
    engine._follow_config()
    assert engine._limits.max_lots_per_signal == before - 1
    [loaded] = [s for s in engine.strategies if s.key == "vol_oi"]
    assert not loaded.strategy.entries_enabled


def test_a_save_inside_a_transaction_counts_once_committed(enabled):
    from django.db import transaction

    seen = config.generation()
    with transaction.atomic():
        _limits(max_lots_per_signal=RiskLimits.active().max_lots_per_signal - 1)
        assert config.generation() == seen  # not committed yet: another connection reads the old row
    assert config.generation() != seen
