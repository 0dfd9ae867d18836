from __future__ import annotations

import pytest
from django.test import override_settings

from trading.strategies import registry
from trading.strategies.config import StrategyConfigError
from trading.strategies.vol_oi.config import VolOiConfig
from trading.strategies.vol_oi.strategy import VolOiStrategy


@pytest.fixture(autouse=True)
def _fresh_registry():
    registry.reload()
    yield
    registry.reload()


def test_it_imports_a_strategy_only_when_asked():
    with override_settings(
        QUANTHUB_STRATEGIES={
            "vol_oi": registry.settings.QUANTHUB_STRATEGIES["vol_oi"],
            "broken": "trading.strategies.does_not_exist.Nope",
        }
    ):
        assert registry.registered_keys() == ["broken", "vol_oi"]
        assert registry.get_strategy_class("vol_oi") is VolOiStrategy  # the broken entry was never imported
        with pytest.raises(ImportError):
            registry.get_strategy_class("broken")


def test_an_unknown_key_names_the_registered_ones():
    with pytest.raises(registry.UnknownStrategy, match=r"'momentum'.*registered: vol_oi"):
        registry.get_strategy_class("momentum")


def test_reload_picks_up_a_new_entry():
    assert registry.get_strategy_class("vol_oi") is VolOiStrategy
    with override_settings(
        QUANTHUB_STRATEGIES={
            "vol_oi": "trading.strategies.vol_oi.strategy.VolOiStrategy",
            "copy": "trading.strategies.vol_oi.strategy.VolOiStrategy",
        }
    ):
        registry.reload()
        assert registry.get_strategy_class("copy") is VolOiStrategy


def test_params_are_validated_against_the_strategy_config_with_defaults_filled_in():
    params = registry.validate_params("vol_oi", {"probe_lots": 3})
    assert params["probe_lots"] == 3
    assert params["take_profit_pct"] == VolOiConfig().take_profit_pct == 40.0
    assert params["stop_loss_pct"] == 25.0 and params["time_stop_s"] == 600
    assert params["volume_spike_sigma"] == 3.0 and params["volume_spike_multiple"] == 5.0
    assert params["jump_pct"] == 0.15 and params["oi_sigma"] == 1.5 and params["oi_window_s"] == 240


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"probe_lots": 0}, "probe_lots: must be at least 1"),
        ({"probe_lots": "two"}, "probe_lots: expected"),
        ({"take_profit": 40}, "take_profit: unknown parameter"),
        ({"stop_loss_pct": 250}, "stop_loss_pct: must be at most 100"),
    ],
)
def test_bad_params_get_a_clear_error_naming_the_field(params, message):
    with pytest.raises(StrategyConfigError) as raised:
        registry.validate_params("vol_oi", params)
    assert message in str(raised.value)
