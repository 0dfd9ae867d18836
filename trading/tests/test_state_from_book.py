"""A strategy's per-signal state comes from its orders and fills, not from what
was saved: held, hedge held, pending and phase are rebuilt on start, takeover
and after every repair, and a hedge left over from a flat signal is unwound."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from trading.strategies.base import BookOrder
from trading.strategies.vol_oi.trader import CLOSED, EXITING, PROBE, SCALED, SignalTrade
from trading.tests.test_vol_oi import FUTURE, OPTION, T0, _strategy

KEY = f"vol_oi:{OPTION}:20261123092000"


def _order(purpose, side, quantity, filled, price="100.00", state="FILLED", security_id=OPTION, kind="CE"):
    return BookOrder(KEY, security_id, "NIFTY", kind, side, purpose, state, quantity, filled, Decimal(price), T0, T0)


def _saved(**fields) -> dict:
    trade = SignalTrade(KEY, "NIFTY", OPTION, 0, T0.isoformat(), hedge_security_id=FUTURE, **fields)
    return {"trades": {KEY: {f: getattr(trade, f) for f in SignalTrade.__dataclass_fields__}}}


def test_saved_state_that_drifted_from_the_orders_is_overruled_by_the_book():
    strategy = _strategy()
    # Saved: hedge 30, pending 30 — the orders say the probe filled and the hedge filled 65.
    strategy.set_state(_saved(held=0, hedge_held=30, pending_entry=30, phase=SCALED))
    intents = strategy.rebuild_from_book(
        [
            _order("ENTRY", "BUY", 130, 130),
            _order("HEDGE", "SELL", 65, 65, "24510.00", security_id=FUTURE, kind="FUT"),
        ]
    )
    trade = strategy.trades[KEY]
    assert (trade.held, trade.hedge_held, trade.pending_entry, trade.phase) == (130, -65, 0, PROBE)
    assert trade.average == 100.0
    assert intents == []


def test_a_signal_flat_in_its_option_with_a_hedge_left_unwinds_the_hedge():
    strategy = _strategy()
    strategy.set_state(_saved(phase=EXITING))
    intents = strategy.rebuild_from_book(
        [
            _order("ENTRY", "BUY", 130, 130),
            _order("HEDGE", "SELL", 65, 65, "24510.00", security_id=FUTURE, kind="FUT"),
            _order("EXIT", "SELL", 130, 130, "120.00"),
            # The hedge's exit was rejected: 65 future units short, orphaned.
            _order("EXIT", "BUY", 65, 0, "24520.00", state="REJECTED", security_id=FUTURE, kind="FUT"),
        ]
    )
    [unwind] = intents
    assert (unwind.security_id, unwind.side, unwind.quantity, unwind.purpose) == (FUTURE, "BUY", 65, "EXIT")
    assert unwind.reduces_exposure and strategy.trades[KEY].phase == EXITING


def test_an_exit_that_ended_unfilled_is_sent_again_at_the_next_mid():
    strategy = _strategy()
    strategy.set_state(_saved(exit_reason="target +40%"))
    strategy.rebuild_from_book([_order("ENTRY", "BUY", 130, 130), _order("EXIT", "SELL", 130, 0, state="CANCELLED")])
    assert strategy.trades[KEY].phase == PROBE
    strategy.last_mid[OPTION] = 101.0
    [again] = strategy.on_timer(T0 + dt.timedelta(seconds=30))
    assert again.purpose == "EXIT" and again.quantity == 130 and again.reason == "target +40%"


def test_a_probe_that_never_filled_is_closed_and_a_trade_never_sent_is_forgotten():
    strategy = _strategy()
    strategy.set_state(_saved(pending_entry=130))
    strategy.rebuild_from_book([_order("ENTRY", "BUY", 130, 0, state="CANCELLED")])
    assert strategy.trades[KEY].phase == CLOSED and not strategy.active()
    strategy.set_state(_saved(pending_entry=130))
    strategy.rebuild_from_book([])
    assert strategy.trades == {}


def test_saved_state_carries_no_holdings():
    strategy = _strategy()
    strategy.set_state(_saved())
    strategy.rebuild_from_book([_order("ENTRY", "BUY", 130, 130)])
    saved = strategy.get_state()["trades"][KEY]
    assert not {"held", "hedge_held", "pending_entry", "phase", "cost"} & set(saved)


fills = st.lists(
    st.tuples(st.sampled_from(["ENTRY", "SCALE", "HEDGE", "EXIT"]), st.integers(0, 4), st.booleans()), max_size=8
)


@settings(max_examples=200, deadline=None)
@given(fills)
def test_held_and_hedge_held_are_the_signed_sum_of_the_fills(rows):
    orders = [_order("ENTRY", "BUY", 130, 130)]
    for purpose, lots, live in rows:
        hedge = purpose == "HEDGE" or (purpose == "EXIT" and lots % 2)
        side = "BUY" if purpose in ("ENTRY", "SCALE") else "SELL"
        qty = 65 * max(lots, 1)
        orders.append(
            _order(
                purpose,
                side,
                qty,
                qty if not live else 0,
                state="OPEN" if live else "FILLED",
                security_id=FUTURE if hedge else OPTION,
                kind="FUT" if hedge else "CE",
            )
        )
    strategy = _strategy()
    strategy.rebuild_from_book(orders)
    trade = strategy.trades[KEY]
    option = sum(o.signed_fill for o in orders if o.security_id == OPTION)
    assert trade.held == max(option, 0)
    assert trade.hedge_held == sum(o.signed_fill for o in orders if o.security_id == FUTURE)
    assert trade.pending_entry == sum(
        o.quantity - o.filled_quantity for o in orders if o.security_id == OPTION and o.purpose in ("ENTRY", "SCALE")
    )
