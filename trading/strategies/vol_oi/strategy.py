"""Volume-OI strategy entry point (the detector and trader are wired in by the engine work)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trading.strategies.base import OrderIntent, Strategy
from trading.strategies.vol_oi.config import VolOiConfig


class VolOiStrategy(Strategy):
    key = "vol_oi"
    config_class = VolOiConfig

    def on_snapshot(self, snapshot: Any) -> Sequence[OrderIntent]:
        return ()
