"""The Volume-OI strategy: detector + trader behind the Strategy contract."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from marketdata.feeds.base import ChainSnapshot
from trading.strategies.base import ExitLevels, FillEvent, OrderIntent, OrderUpdate, Strategy, to_tick
from trading.strategies.vol_oi.config import VolOiConfig
from trading.strategies.vol_oi.detector import VolOiDetector
from trading.strategies.vol_oi.trader import (
    CLOSED,
    EXITING,
    PROBE,
    REFUSED,
    SCALED,
    SignalTrade,
    Transition,
    exit_reason,
)


class VolOiStrategy(Strategy):
    key = "vol_oi"
    config_class = VolOiConfig

    def __init__(self) -> None:
        super().__init__()
        self.detector = VolOiDetector(self.config)
        self.trades: dict[str, SignalTrade] = {}
        self.lot_sizes: dict[str, int] = {}  # security id -> lot size (instrument data from the engine)
        self.futures: dict[str, tuple[str, int]] = {}  # underlying -> (future security id, lot size)
        self.cooldown: dict[str, str] = {}  # security id -> ISO time it may trade again
        self.transitions: list[Transition] = []
        self.last_mid: dict[str, float] = {}

    # --- set-up -----------------------------------------------------------------------

    def configure(self, config: VolOiConfig) -> None:
        super().configure(config)
        self.detector.configure(config)

    def set_instruments(self, lot_sizes: dict[str, int], futures: dict[str, tuple[str, int]]) -> None:
        self.lot_sizes, self.futures = dict(lot_sizes), dict(futures)

    def set_anomaly_scorers(self, scorers: dict) -> None:
        self.detector.set_scorers(scorers)

    def warm_up(self, history) -> None:
        for snapshot in history:
            self.detector.on_snapshot(snapshot)

    # --- helpers --------------------------------------------------------------------

    def _move(self, trade: SignalTrade, new: str, reason: str, at: dt.datetime) -> None:
        if trade.phase != new:
            self.transitions.append(Transition(trade.key, trade.phase, new, reason, at))
            trade.phase = new

    def _intent(
        self,
        trade: SignalTrade,
        side: str,
        lots: int,
        lot_size: int,
        purpose: str,
        price,
        *,
        security_id: str | None = None,
        reduces: bool = False,
        reason: str = "",
        at=None,
    ) -> OrderIntent:
        return OrderIntent(
            self.key,
            security_id or trade.security_id,
            side,
            lots,
            lot_size,
            purpose,
            price,
            signal_key=trade.key,
            reduces_exposure=reduces,
            reason=reason,
            snapshot_at=at,
            features=trade.features,
        )

    def active(self) -> list[SignalTrade]:
        return [t for t in self.trades.values() if t.phase not in (CLOSED, REFUSED)]

    # --- the contract -------------------------------------------------------------------

    def on_snapshot(self, snapshot: ChainSnapshot) -> Sequence[OrderIntent]:
        intents: list[OrderIntent] = []
        now = snapshot.exchange_time
        good = snapshot.flags == 0
        for sid, mid, flag in zip(
            snapshot.security_id.tolist(), ((snapshot.bid + snapshot.ask) / 2).tolist(), good.tolist(), strict=True
        ):
            if flag:
                self.last_mid[sid] = mid
        for detection in self.detector.on_snapshot(snapshot):
            if detection.kind == "entry":
                intents.extend(self._enter(detection))
            else:
                intents.extend(self._scale(detection))
        intents.extend(self._exits(now))
        return intents

    def _enter(self, d) -> list[OrderIntent]:
        lot = self.lot_sizes.get(d.security_id)
        if not self.entries_enabled or lot is None:
            return []
        if any(t.security_id == d.security_id for t in self.active()):
            return []
        if len(self.active()) >= self.config.max_open_signals:
            return []
        if self.cooldown.get(d.security_id, "") > d.at.isoformat():
            return []
        key = f"vol_oi:{d.security_id}:{d.at:%Y%m%d%H%M%S}"
        trade = SignalTrade(
            key,
            d.underlying,
            d.security_id,
            d.option_type,
            d.at.isoformat(),
            features={**d.features, "strike": d.strike, "delta": d.delta},
        )
        self.trades[key] = trade
        self.transitions.append(Transition(key, "DETECTED", PROBE, "volume spike + mid jump", d.at))
        trade.pending_entry = self.config.probe_lots * lot
        intents = [
            self._intent(trade, "BUY", self.config.probe_lots, lot, "ENTRY", to_tick(d.ask), reason="probe", at=d.at)
        ]
        hedge = self._hedge(trade, d.delta, self.config.probe_lots * lot, d.at)
        return intents + ([hedge] if hedge else [])

    def _hedge(self, trade: SignalTrade, delta: float, option_units: int, at) -> OrderIntent | None:
        if not self.config.hedge_with_future or trade.underlying not in self.futures:
            return None
        future_id, future_lot = self.futures[trade.underlying]
        lots = round(abs(delta) * option_units / future_lot)
        if lots < 1:
            return None
        trade.hedge_security_id = future_id
        # Long calls are long delta: sell the future; long puts: buy it.
        side = "SELL" if delta > 0 else "BUY"
        return self._intent(
            trade, side, lots, future_lot, "HEDGE", None, security_id=future_id, reason="delta hedge", at=at
        )

    def _scale(self, d) -> list[OrderIntent]:
        trade = next((t for t in self.active() if t.security_id == d.security_id), None)
        if trade is None or trade.phase != PROBE or not trade.held or not self.entries_enabled:
            return []
        if self.config.scale_lots <= 0:
            return []
        lot = self.lot_sizes[trade.security_id]
        self._move(trade, SCALED, "OI confirmation", d.at)
        trade.pending_entry += self.config.scale_lots * lot
        intents = [
            self._intent(trade, "BUY", self.config.scale_lots, lot, "SCALE", to_tick(d.ask), reason="scale", at=d.at)
        ]
        hedge = self._hedge(trade, d.delta, self.config.scale_lots * lot, d.at)
        return intents + ([hedge] if hedge else [])

    def _exits(self, now: dt.datetime) -> list[OrderIntent]:
        intents = []
        for trade in self.active():
            if trade.phase == EXITING or not trade.held:
                continue
            mid = self.last_mid.get(trade.security_id)
            if mid is None:
                continue
            reason = exit_reason(
                trade,
                mid,
                now,
                take_profit_pct=self.config.take_profit_pct,
                stop_loss_pct=self.config.stop_loss_pct,
                time_stop_s=self.config.time_stop_s,
            )
            if reason:
                intents.extend(self._exit(trade, reason, now, mid))
        return intents

    def _exit(self, trade: SignalTrade, reason: str, now: dt.datetime, mid: float) -> list[OrderIntent]:
        lot = self.lot_sizes[trade.security_id]
        self._move(trade, EXITING, reason, now)
        trade.exit_reason = reason
        intents = [
            self._intent(
                trade, "SELL", trade.held // lot, lot, "EXIT", to_tick(mid), reduces=True, reason=reason, at=now
            )
        ]
        if trade.hedge_held:
            future_id, future_lot = self.futures[trade.underlying]
            side = "BUY" if trade.hedge_held < 0 else "SELL"
            intents.append(
                self._intent(
                    trade,
                    side,
                    abs(trade.hedge_held) // future_lot,
                    future_lot,
                    "EXIT",
                    None,
                    security_id=future_id,
                    reduces=True,
                    reason=f"unwind hedge: {reason}",
                    at=now,
                )
            )
        return intents

    def on_fill(self, fill: FillEvent) -> Sequence[OrderIntent]:
        trade = self.trades.get(fill.signal_key or "")
        if trade is None:
            return ()
        signed = fill.quantity if fill.side == "BUY" else -fill.quantity
        if fill.security_id == trade.hedge_security_id and fill.security_id != trade.security_id:
            trade.hedge_held += signed
        elif fill.side == "BUY":
            trade.held += fill.quantity
            trade.cost += float(fill.price) * fill.quantity
            trade.pending_entry = max(trade.pending_entry - fill.quantity, 0)
        else:
            ratio = fill.quantity / trade.held if trade.held else 1.0
            trade.cost -= trade.cost * ratio
            trade.held -= fill.quantity
        if trade.phase == EXITING and trade.held <= 0 and trade.hedge_held == 0:
            self._move(trade, CLOSED, f"exited: {trade.exit_reason}", fill.filled_at)
            self.cooldown[trade.security_id] = (
                fill.filled_at + dt.timedelta(seconds=self.config.cooldown_s)
            ).isoformat()
        return ()

    def on_order_update(self, update: OrderUpdate) -> Sequence[OrderIntent]:
        trade = self.trades.get(update.signal_key or "")
        if trade is None or update.purpose not in ("ENTRY", "SCALE"):
            return ()
        trade.pending_entry = max(trade.pending_entry - (update.quantity - update.filled_quantity), 0)
        if update.purpose == "ENTRY" and trade.held == 0 and trade.pending_entry == 0:
            self._move(
                trade,
                CLOSED,
                f"probe not filled ({update.state}: {update.reason})",
                dt.datetime.fromisoformat(trade.opened_at),
            )
        return ()

    def on_refused(self, intent: OrderIntent, reason: str, at: dt.datetime) -> None:
        """The gate refused an intent: a refused probe ends the signal; a refused
        scale-up leaves the probe to exit by its rules."""
        trade = self.trades.get(intent.signal_key or "")
        if trade is None:
            return
        if intent.purpose == "ENTRY":
            trade.pending_entry = 0
            if not trade.held:
                self._move(trade, REFUSED, f"probe refused: {reason}", at)
        elif intent.purpose == "SCALE":
            trade.pending_entry = max(trade.pending_entry - intent.quantity, 0)
            self._move(trade, PROBE, f"scale-up refused: {reason}", at)

    def on_timer(self, now: dt.datetime) -> Sequence[OrderIntent]:
        return self._exits(now)

    def exit_levels(self) -> dict[str, ExitLevels]:
        levels = {}
        for trade in self.active():
            if trade.held and trade.average:
                levels[trade.security_id] = ExitLevels(
                    stop=trade.average * (1 - self.config.stop_loss_pct / 100),
                    target=trade.average * (1 + self.config.take_profit_pct / 100),
                    deadline=trade.opened + dt.timedelta(seconds=self.config.time_stop_s),
                )
        return levels

    def get_state(self) -> dict[str, Any]:
        return {
            "trades": {k: asdict(t) for k, t in self.trades.items() if t.phase not in (CLOSED, REFUSED)},
            "cooldown": self.cooldown,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.trades = {k: SignalTrade(**v) for k, v in state.get("trades", {}).items()}
        self.cooldown = dict(state.get("cooldown", {}))
