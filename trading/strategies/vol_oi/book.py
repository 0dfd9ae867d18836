"""The Volume-OI trader's per-signal state, rebuilt from the order book (pure).

Orders and fills are the truth: what a signal holds in its option and its
hedge, what entry is still pending, and its phase all follow from them. The
saved state only adds what orders cannot say (when the signal opened, its
features, why it exits). A signal that is flat in its option legs and still
holds a hedge is an orphaned hedge: it is unwound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from marketdata.feeds.base import CE, PE
from trading.strategies.base import BookOrder
from trading.strategies.vol_oi.trader import CLOSED, EXITING, PROBE, SCALED, ZERO, SignalTrade, as_decimal

ENTRIES = ("ENTRY", "SCALE")
EXITS = ("EXIT", "KILL")


@dataclass(frozen=True, slots=True)
class Unwind:
    """A hedge to close: ``quantity`` signed units of ``security_id`` held."""

    signal_key: str
    security_id: str
    held: int


def rebuild(saved: dict[str, SignalTrade], orders: Sequence[BookOrder]) -> tuple[dict[str, SignalTrade], list[Unwind]]:
    """Per-signal trades from the book; ``saved`` supplies only what orders cannot."""
    by_signal: dict[str, list[BookOrder]] = {}
    for order in orders:
        if order.signal_key:
            by_signal.setdefault(order.signal_key, []).append(order)
    trades: dict[str, SignalTrade] = {}
    unwinds: list[Unwind] = []
    for key, rows in by_signal.items():
        prior = saved.get(key)
        entry = next((o for o in rows if o.purpose in ENTRIES), None)
        option_id = entry.security_id if entry else (prior.security_id if prior else "")
        if not option_id:
            continue
        option = [o for o in rows if o.security_id == option_id]
        hedge = [o for o in rows if o.security_id != option_id]
        held = sum(o.signed_fill for o in option)
        bought = [o for o in option if o.side == "BUY" and o.filled_quantity and o.average_price is not None]
        bought_qty = sum(o.filled_quantity for o in bought)
        spent = sum((as_decimal(o.average_price) * o.filled_quantity for o in bought), ZERO)
        hedge_held = sum(o.signed_fill for o in hedge)
        hedge_id = next(
            (o.security_id for o in hedge if o.purpose == "HEDGE"), prior.hedge_security_id if prior else ""
        )
        pending = sum(o.quantity - o.filled_quantity for o in option if o.purpose in ENTRIES and o.live)
        exits = [o for o in rows if o.purpose in EXITS]
        option_exit_live = any(o.live for o in exits if o.security_id == option_id)
        hedge_exit_live = any(o.live for o in exits if o.security_id != option_id)
        anything_live = any(o.live for o in rows)
        first = entry or rows[0]
        trade = SignalTrade(
            key,
            first.underlying,
            option_id,
            prior.option_type if prior else (CE if first.kind == "CE" else PE),
            prior.opened_at if prior else (first.first_fill_at or first.created_at).isoformat(),
            held=max(held, 0),
            cost=spent * max(held, 0) / bought_qty if bought_qty else ZERO,  # exact: the average times what is held
            pending_entry=pending,
            hedge_security_id=hedge_id,
            hedge_held=hedge_held,
            exit_reason=(prior.exit_reason if prior else "") or next((o.reason for o in exits if o.reason), ""),
            features=dict(prior.features) if prior else {},
        )
        if held <= 0 and hedge_held == 0 and not anything_live:
            trade.phase = CLOSED  # exited, or a probe that never filled
        elif exits and (option_exit_live or held <= 0):
            trade.phase = EXITING
        else:
            # No exit yet, or one that ended without taking everything (rejected,
            # cancelled): the trade is managed again and exits at the next mid.
            trade.phase = SCALED if any(o.purpose == "SCALE" for o in option) else PROBE
        if held <= 0 and pending == 0 and hedge_held != 0 and not hedge_exit_live:
            trade.phase = EXITING
            trade.exit_reason = trade.exit_reason or "option legs flat"
            unwinds.append(Unwind(key, hedge_id or hedge[0].security_id, hedge_held))
        trades[key] = trade
    return trades, unwinds
