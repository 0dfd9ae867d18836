"""The Volume-OI strategy: detector + trader behind the Strategy contract."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import numpy as np

from marketdata.feeds.base import ChainSnapshot, QuoteSnapshot
from trading.strategies.base import BookOrder, ExitLevels, FillEvent, OrderIntent, OrderUpdate, Strategy, to_tick
from trading.strategies.vol_oi.book import rebuild
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
    as_decimal,
    exit_reason,
)


def _mid(bid: float, ask: float) -> Decimal:
    """The exact mid of two tick prices (floats from the feed, written as they were quoted)."""
    return (Decimal(str(bid)) + Decimal(str(ask))) / 2


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
        self.last_mid: dict[str, Decimal] = {}  # traded contracts only: exact mids for the exit rules
        self.last_delta: dict[str, float] = {}  # traded contracts only: for the hedge

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
        self._track(snapshot.security_id, snapshot.bid, snapshot.ask, snapshot.flags == 0, snapshot.delta)
        for detection in self.detector.on_snapshot(snapshot):
            if detection.kind == "entry":
                intents.extend(self._enter(detection))
            else:
                intents.extend(self._scale(detection))
        intents.extend(self._exits(now))
        return intents

    def on_quotes(self, quotes: QuoteSnapshot) -> Sequence[OrderIntent]:
        """One-second quotes of the candidate contracts: the jump window's history, and
        fresher mids for the exit rules (evaluated each second by ``on_timer``)."""
        self.detector.on_quotes(quotes)
        good = (quotes.bid > 0) & (quotes.ask >= quotes.bid)
        self._track(quotes.security_id, quotes.bid, quotes.ask, good, None)
        return ()

    def _track(self, ids: np.ndarray, bid: np.ndarray, ask: np.ndarray, good: np.ndarray, delta) -> None:
        """Exact mids (and the delta) of the contracts this strategy trades."""
        traded = {t.security_id for t in self.active()}
        if not traded:
            return
        # A set look-up per contract: np.isin sorts both sides, dearer than the rest of the second.
        for i, (sid, ok) in enumerate(zip(ids.tolist(), good.tolist(), strict=True)):
            if not ok or sid not in traded:
                continue
            self.last_mid[sid] = _mid(float(bid[i]), float(ask[i]))
            if delta is not None and np.isfinite(delta[i]):
                self.last_delta[sid] = float(delta[i])

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
        self.last_delta[d.security_id] = d.delta
        self.transitions.append(Transition(key, "DETECTED", PROBE, "volume spike + mid jump", d.at))
        trade.pending_entry = self.config.probe_lots * lot
        return [
            self._intent(trade, "BUY", self.config.probe_lots, lot, "ENTRY", to_tick(d.ask), reason="probe", at=d.at)
        ]

    def hedge_target(self, trade: SignalTrade) -> int:
        """Signed future units that make the signal delta-neutral to the nearest lot."""
        if not self.config.hedge_with_future or trade.underlying not in self.futures:
            return 0
        _, future_lot = self.futures[trade.underlying]
        delta = self.last_delta.get(trade.security_id, float(trade.features.get("delta", 0.0)))
        # Long calls are long delta: sell the future; long puts: buy it. Rounding to the
        # nearest lot leaves at most half a futures lot of delta unhedged.
        return -round(delta * trade.held / future_lot) * future_lot

    def _hedge(self, trade: SignalTrade, at) -> OrderIntent | None:
        """After each option fill: order the difference between the hedge the signal
        holds (and has ordered) and the one its options now need."""
        if trade.phase in (EXITING, CLOSED, REFUSED) or trade.underlying not in self.futures:
            return None
        future_id, future_lot = self.futures[trade.underlying]
        have = trade.hedge_held + trade.hedge_pending
        want = self.hedge_target(trade)
        lots = abs(want - have) // future_lot
        if lots < 1:
            return None
        trade.hedge_security_id = future_id
        side = "BUY" if want > have else "SELL"
        trade.hedge_pending += lots * future_lot if side == "BUY" else -lots * future_lot
        shrinks = abs(want) < abs(have)  # a smaller hedge reduces the futures exposure
        return self._intent(
            trade,
            side,
            lots,
            future_lot,
            "HEDGE",
            None,
            security_id=future_id,
            reduces=shrinks,
            reason="delta hedge",
            at=at,
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
        self.last_delta[trade.security_id] = d.delta
        return [
            self._intent(trade, "BUY", self.config.scale_lots, lot, "SCALE", to_tick(d.ask), reason="scale", at=d.at)
        ]

    def _exits(self, now: dt.datetime) -> list[OrderIntent]:
        intents = []
        for trade in self.active():
            if trade.phase == EXITING or not trade.held:
                continue
            mid = self.last_mid.get(trade.security_id)
            if mid is None:
                continue
            reason = (
                exit_reason(
                    trade,
                    mid,
                    now,
                    take_profit_pct=as_decimal(self.config.take_profit_pct),
                    stop_loss_pct=as_decimal(self.config.stop_loss_pct),
                    time_stop_s=self.config.time_stop_s,
                )
                or trade.exit_reason
            )  # an exit that ended unfilled is sent again
            if reason:
                intents.extend(self._exit(trade, reason, now, mid))
        return intents

    def _exit(self, trade: SignalTrade, reason: str, now: dt.datetime, mid: Decimal) -> list[OrderIntent]:
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
        intents: list[OrderIntent] = []
        if fill.security_id == trade.hedge_security_id and fill.security_id != trade.security_id:
            trade.hedge_held += signed
            if fill.purpose == "HEDGE":
                trade.hedge_pending -= signed
        elif fill.side == "BUY":
            trade.held += fill.quantity
            trade.cost += as_decimal(fill.price) * fill.quantity
            trade.pending_entry = max(trade.pending_entry - fill.quantity, 0)
            hedge = self._hedge(trade, fill.filled_at)
            if hedge is not None:
                intents.append(hedge)
        else:
            # Selling part of the position takes out its share of the cost, exactly.
            trade.cost = trade.cost * (trade.held - fill.quantity) / trade.held if trade.held else Decimal("0")
            trade.held -= fill.quantity
        if trade.phase == EXITING and trade.held <= 0 and trade.hedge_held == 0:
            self._move(trade, CLOSED, f"exited: {trade.exit_reason}", fill.filled_at)
            self.cooldown[trade.security_id] = (
                fill.filled_at + dt.timedelta(seconds=self.config.cooldown_s)
            ).isoformat()
        return intents

    def on_order_update(self, update: OrderUpdate) -> Sequence[OrderIntent]:
        trade = self.trades.get(update.signal_key or "")
        if trade is None:
            return ()
        unfilled = update.quantity - update.filled_quantity
        if update.purpose == "HEDGE":
            # Pending hedges all point the way the options' delta grew (an update does not
            # carry the side): what never filled is no longer coming.
            left = max(abs(trade.hedge_pending) - unfilled, 0)
            trade.hedge_pending = left if trade.hedge_pending > 0 else -left
            return ()
        if update.purpose not in ("ENTRY", "SCALE"):
            return ()
        trade.pending_entry = max(trade.pending_entry - unfilled, 0)
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
        elif intent.purpose == "HEDGE":
            trade.hedge_pending -= intent.quantity if intent.side == "BUY" else -intent.quantity

    def on_timer(self, now: dt.datetime) -> Sequence[OrderIntent]:
        return self._exits(now)

    def exit_levels(self) -> dict[str, ExitLevels]:
        levels = {}
        for trade in self.active():
            if trade.held and trade.average:
                sl, tp = as_decimal(self.config.stop_loss_pct), as_decimal(self.config.take_profit_pct)
                levels[trade.security_id] = ExitLevels(
                    stop=trade.average * (100 - sl) / 100,
                    target=trade.average * (100 + tp) / 100,
                    deadline=trade.opened + dt.timedelta(seconds=self.config.time_stop_s),
                )
        return levels

    def rebuild_from_book(self, orders: Sequence[BookOrder]) -> Sequence[OrderIntent]:
        """Held, hedge held, pending and phase of every signal from its orders and
        fills; an orphaned hedge (option legs flat) is unwound."""
        # A saved trade without a single order was detected and never sent: it goes.
        self.trades, unwinds = rebuild(self.trades, orders)
        trades = self.trades
        intents = []
        for unwind in unwinds:
            trade = trades[unwind.signal_key]
            future_id, future_lot = self.futures.get(trade.underlying, ("", 0))
            lot = future_lot if unwind.security_id == future_id and future_lot else abs(unwind.held)
            intents.append(
                self._intent(
                    trade,
                    "BUY" if unwind.held < 0 else "SELL",
                    abs(unwind.held) // lot,
                    lot,
                    "EXIT",
                    None,
                    security_id=unwind.security_id,
                    reduces=True,
                    reason="unwind hedge: option legs flat",
                )
            )
        return intents

    # What orders cannot say; held, hedge held, pending and phase come from the book.
    SAVED = ("key", "underlying", "security_id", "option_type", "opened_at", "hedge_security_id", "exit_reason")

    def get_state(self) -> dict[str, Any]:
        return {
            "trades": {
                k: {**{f: getattr(t, f) for f in self.SAVED}, "features": t.features}
                for k, t in self.trades.items()
                if t.phase not in (CLOSED, REFUSED)
            },
            "cooldown": self.cooldown,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """What ``get_state`` saved; the engine then rebuilds the rest from the book."""
        fields = set(SignalTrade.__dataclass_fields__)
        self.trades = {
            k: SignalTrade(**{f: v for f, v in t.items() if f in fields}) for k, t in state.get("trades", {}).items()
        }
        self.cooldown = dict(state.get("cooldown", {}))
