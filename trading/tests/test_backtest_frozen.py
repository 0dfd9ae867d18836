"""A backtest's strategy parameters are frozen for the whole run."""

from __future__ import annotations

import datetime as dt

import pytest

from marketdata.demo import ensure_demo_instruments
from trading.backtest.runner import Plan, _build_day, _frozen_params
from trading.models import Strategy

DAY = dt.date(2026, 11, 23)


@pytest.mark.django_db
def test_an_admin_change_mid_run_reaches_neither_the_running_day_nor_the_next():
    ensure_demo_instruments(DAY)
    Strategy.objects.filter(key="vol_oi").update(params={"take_profit_pct": 40.0}, enabled=True)
    plan = Plan(run_id=7, days=[DAY, DAY + dt.timedelta(days=1)], seed=3, scenario=None, strategies=("vol_oi",))
    params = _frozen_params(plan.strategies)
    engine, _, _ = _build_day(plan, DAY, 0, {}, lambda: "BT7N1", params)
    engine._load_strategies()
    [loaded] = engine.strategies
    assert loaded.strategy.config.take_profit_pct == 40.0
    # The risk manager edits the strategy in the admin (the version bumps) mid-run.
    row = Strategy.objects.get(key="vol_oi")
    row.params = {"take_profit_pct": 10.0, "probe_lots": 1}
    row.enabled = False
    row.version += 1
    row.save()
    engine._refresh_config()
    assert loaded.strategy.config.take_profit_pct == 40.0 and loaded.strategy.entries_enabled
    # The next day's engine is configured from the parameters the run started with.
    tomorrow, _, _ = _build_day(plan, plan.days[1], 1, {}, lambda: "BT7N2", params)
    tomorrow._load_strategies()
    config = tomorrow.strategies[0].strategy.config
    assert (config.take_profit_pct, config.probe_lots) == (40.0, 2)
