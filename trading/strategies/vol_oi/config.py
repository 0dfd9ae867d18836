"""Volume-OI strategy parameters, with the product's values as defaults."""

from __future__ import annotations

from dataclasses import dataclass

from trading.strategies.config import StrategyConfig, StrategyConfigError, bounded


@dataclass(frozen=True)
class VolOiConfig(StrategyConfig):
    underlyings: tuple[str, ...] = ("NIFTY", "BANKNIFTY")
    volume_spike_sigma: float = bounded(
        3.0, minimum=0.5, help="Volume spike: above this many σ of the 1-minute baseline"
    )
    volume_spike_multiple: float = bounded(5.0, minimum=1.0, help="… and above this multiple of the 1-minute average")
    volume_window_s: int = bounded(60, minimum=10, maximum=900)
    interval_s: int = bounded(
        3, minimum=1, maximum=60, help="Seconds between the chain snapshots the baselines count in (60 on minute bars)"
    )
    jump_pct: float = bounded(0.15, minimum=0.01, maximum=20.0, help="Mid-price jump, percent")
    jump_window_s: int = bounded(2, minimum=1, maximum=30)
    oi_sigma: float = bounded(1.5, minimum=0.1, help="OI confirmation threshold in σ")
    oi_window_s: int = bounded(240, minimum=30, maximum=1800, help="Confirmation must come within this many seconds")
    max_strike_offset: int = bounded(3, minimum=0, maximum=20, help="Only strikes this many steps from ATM")
    min_premium: float = bounded(5.0, minimum=0.05, help="Ignore options cheaper than this (₹): illiquid wings")
    probe_lots: int = bounded(2, minimum=1, maximum=100)
    scale_lots: int = bounded(8, minimum=0, maximum=100)
    hedge_with_future: bool = True
    take_profit_pct: float = bounded(40.0, minimum=1.0, maximum=1000.0)
    stop_loss_pct: float = bounded(25.0, minimum=1.0, maximum=100.0)
    time_stop_s: int = bounded(600, minimum=10, maximum=22500)
    max_open_signals: int = bounded(3, minimum=1, maximum=50)
    cooldown_s: int = bounded(120, minimum=0, maximum=3600, help="Per contract, after a signal closes")
    min_anomaly_score: float = bounded(
        0.0,
        minimum=0.0,
        maximum=1.0,
        help="Enter only when the live anomaly model scores the snapshot at least this percentile "
        "(0.99: more unusual than 99 % of its training snapshots); 0 = off. Without a live model, no entry.",
    )

    def validate(self) -> None:
        errors = []
        if not self.underlyings:
            errors.append("underlyings: name at least one underlying")
        if errors:
            raise StrategyConfigError(errors)
