from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pytest

from marketdata import synthetic
from marketdata.feeds.base import ChainSnapshot, QuoteSnapshot
from marketdata.feeds.simulator import SimulatorFeed
from marketdata.validation import ChainValidator
from quanthub.clock import IST
from trading.strategies.base import BookOrder, FillEvent, OrderUpdate
from trading.strategies.vol_oi.config import VolOiConfig
from trading.strategies.vol_oi.detector import Detection
from trading.strategies.vol_oi.strategy import VolOiStrategy

DAY = dt.date(2026, 11, 23)
T0 = dt.datetime(2026, 11, 23, 9, 20, tzinfo=IST)
OPTION, FUTURE = "132611240245000", "9132611240"


def _strategy(**params) -> VolOiStrategy:
    strategy = VolOiStrategy()
    strategy.configure(VolOiConfig.from_params(params))
    contracts = synthetic.build_master(DAY)
    strategy.set_instruments(
        {c.security_id: c.lot_size for c in contracts if c.kind in ("CE", "PE")},
        {c.underlying: (c.security_id, c.lot_size) for c in contracts if c.kind == "FUT"},
    )
    strategy.lot_sizes[OPTION] = 65
    strategy.futures["NIFTY"] = (FUTURE, 65)
    return strategy


def _detection(kind="entry", at=T0, ask=100.0, delta=0.5):
    return Detection(kind, "NIFTY", OPTION, 24500.0, 0, at, ask - 0.05, ask - 0.1, ask, delta, {"volume_z": 40.0})


def _fill(trade, side, quantity, price, at, security_id=OPTION, purpose="ENTRY"):
    return FillEvent("vol_oi", trade.key, security_id, side, quantity, Decimal(str(price)), at, purpose, True)


def _book(key, purpose, side, quantity, filled, price, state="FILLED", security_id=OPTION, kind="CE"):
    return BookOrder(key, security_id, "NIFTY", kind, side, purpose, state, quantity, filled, Decimal(price), T0, T0)


def _run_session(scenario, minutes=75, seed=7):
    feed = SimulatorFeed(
        seed=seed,
        scenario=scenario,
        trading_day=DAY,
        end_time=(dt.datetime(2026, 1, 1, 9, 15) + dt.timedelta(minutes=minutes)).time(),
    )
    strategy = _strategy()
    validator = ChainValidator(strike_steps={"NIFTY": 50, "BANKNIFTY": 100})
    entries = []
    for item in feed.run_sync():
        if isinstance(item, ChainSnapshot):
            validator.validate(item, item.received_at)
            entries += [(d.at, d.security_id) for d in strategy.detector.on_snapshot(item) if d.kind == "entry"]
    return feed, entries


@pytest.mark.parametrize("seed", [7, 21])
def test_the_detector_fires_exactly_at_injected_events(seed):
    feed, entries = _run_session("default", seed=seed)
    injected = [(e.at, e.security_id) for e in feed.injected if e.type == "informed_flow"]
    assert sorted(entries) == sorted(injected) and len(injected) >= 5


def test_the_detector_never_fires_in_calm_or_noise_only_stretches():
    noise = {
        "events": [
            {"time": "09:40", "type": "bad_ticks", "underlying": "NIFTY", "kind": k, "count": 3}
            for k in ("crossed", "nan", "negative")
        ]
        + [{"time": "10:00", "type": "feed_gap", "seconds": 9}]
    }
    for scenario in (None, noise):
        _, entries = _run_session(scenario, minutes=90)
        assert entries == []


def test_an_entry_probes_two_lots_at_the_ask_and_each_fill_is_delta_hedged():
    strategy = _strategy()
    [probe] = strategy._enter(_detection(delta=0.5))
    assert (probe.side, probe.lots, probe.lot_size, probe.purpose, probe.limit_price) == (
        "BUY",
        2,
        65,
        "ENTRY",
        Decimal("100.00"),
    )
    assert [(t.old, t.new) for t in strategy.transitions] == [("DETECTED", "PROBE")]
    trade = strategy.active()[0]
    # 0.5 delta × 130 option units / 65 per future lot = 1 lot, sold against long calls.
    [hedge] = strategy.on_fill(_fill(trade, "BUY", 130, "100.00", T0))
    assert (hedge.security_id, hedge.side, hedge.lots, hedge.purpose) == (FUTURE, "SELL", 1, "HEDGE")
    assert trade.hedge_pending == -65


def test_oi_confirmation_scales_by_eight_lots_and_a_refused_scale_leaves_the_probe():
    strategy = _strategy()
    strategy._enter(_detection())
    trade = strategy.active()[0]
    strategy.on_fill(_fill(trade, "BUY", 130, "100.00", T0))
    [scale] = strategy._scale(_detection("confirm", at=T0 + dt.timedelta(seconds=60)))
    assert (scale.lots, scale.purpose, trade.phase) == (8, "SCALE", "SCALED")
    strategy.on_refused(scale, "8 lots would pass 10 lots per signal", T0 + dt.timedelta(seconds=60))
    assert trade.phase == "PROBE" and trade.held == 130


def test_a_partial_fill_carries_on_with_what_filled_and_an_empty_probe_closes():
    strategy = _strategy()
    strategy._enter(_detection())
    trade = strategy.active()[0]
    strategy.on_fill(_fill(trade, "BUY", 65, "100.00", T0))
    strategy.on_order_update(
        OrderUpdate(
            "vol_oi", trade.key, OPTION, "ENTRY", "CANCELLED", 65, 130, "50% filled after 1000 ms: remainder cancelled"
        )
    )
    assert trade.phase == "PROBE" and trade.held == 65 and trade.pending_entry == 0

    other = _strategy()
    other._enter(_detection())
    empty = other.active()[0]
    other.on_order_update(OrderUpdate("vol_oi", empty.key, OPTION, "ENTRY", "CANCELLED", 0, 130, "nothing filled"))
    assert empty.phase == "CLOSED"


def test_a_refused_probe_ends_the_signal():
    strategy = _strategy()
    [probe] = strategy._enter(_detection())
    strategy.on_refused(probe, "market data is stale", T0)
    assert strategy.trades[probe.signal_key].phase == "REFUSED" and strategy.active() == []


@pytest.mark.parametrize(
    ("mid", "minutes", "reason"),
    [(141.0, 1, "target +40%"), (74.9, 1, "stop -25%"), (105.0, 10, "time stop 10 min")],
)
def test_exits_at_target_stop_or_time_whichever_first(mid, minutes, reason):
    strategy = _strategy()
    strategy._enter(_detection())
    trade = strategy.active()[0]
    strategy.on_fill(_fill(trade, "BUY", 130, "100.00", T0))
    strategy.on_fill(_fill(trade, "SELL", 65, "24500", T0, security_id=FUTURE, purpose="HEDGE"))
    assert trade.hedge_held == -65 and trade.hedge_pending == 0
    strategy.last_mid[OPTION] = Decimal("120")
    assert strategy.on_timer(T0 + dt.timedelta(seconds=30)) == []
    strategy.last_mid[OPTION] = Decimal(str(mid))
    exit_option, unwind = strategy.on_timer(T0 + dt.timedelta(minutes=minutes))
    assert (exit_option.side, exit_option.lots, exit_option.reduces_exposure, exit_option.reason) == (
        "SELL",
        2,
        True,
        reason,
    )
    assert (unwind.security_id, unwind.side, unwind.lots) == (FUTURE, "BUY", 1)
    assert trade.phase == "EXITING" and strategy.on_timer(T0 + dt.timedelta(minutes=minutes + 1)) == []
    strategy.on_fill(_fill(trade, "SELL", 130, str(mid), T0 + dt.timedelta(minutes=minutes), purpose="EXIT"))
    strategy.on_fill(
        _fill(trade, "BUY", 65, "24500", T0 + dt.timedelta(minutes=minutes), security_id=FUTURE, purpose="EXIT")
    )
    assert trade.phase == "CLOSED"
    assert [t.new for t in strategy.transitions] == ["PROBE", "EXITING", "CLOSED"]


def test_disabled_means_no_new_entries_but_open_trades_still_exit():
    strategy = _strategy()
    strategy._enter(_detection())
    trade = strategy.active()[0]
    strategy.on_fill(_fill(trade, "BUY", 130, "100.00", T0))
    strategy.entries_enabled = False
    assert (
        strategy._enter(
            _detection(at=T0 + dt.timedelta(minutes=1)).__class__(
                "entry", "NIFTY", "132611240245500", 24550.0, 0, T0, 80.0, 79.9, 80.0, 0.4, {}
            )
        )
        == []
    )
    strategy.last_mid[OPTION] = Decimal("150")
    assert strategy.on_timer(T0 + dt.timedelta(minutes=2))[0].purpose == "EXIT"


def test_state_survives_a_restart_and_the_exit_rules_still_apply():
    strategy = _strategy()
    strategy._enter(_detection())
    trade = strategy.active()[0]
    strategy.on_fill(_fill(trade, "BUY", 130, "100.00", T0))
    restarted = _strategy()
    restarted.set_state(strategy.get_state())
    restarted.rebuild_from_book([_book(trade.key, "ENTRY", "BUY", 130, 130, "100.00")])  # what the engine does
    assert [t.key for t in restarted.active()] == [trade.key]
    assert restarted._enter(_detection(at=T0 + dt.timedelta(seconds=30))) == []  # no duplicate entry
    restarted.last_mid[OPTION] = Decimal("70")
    assert restarted.on_timer(T0 + dt.timedelta(minutes=1))[0].reason == "stop -25%"


def test_open_signals_are_capped_and_a_closed_contract_cools_down():
    strategy = _strategy(max_open_signals=1, cooldown_s=120)
    assert strategy._enter(_detection())
    other = Detection("entry", "NIFTY", "132611240245500", 24550.0, 0, T0, 80.0, 79.9, 80.0, 0.4, {})
    strategy.lot_sizes["132611240245500"] = 65
    assert strategy._enter(other) == []
    trade = strategy.active()[0]
    strategy.on_refused(strategy._intent(trade, "BUY", 2, 65, "ENTRY", None), "refused", T0)
    strategy.cooldown[OPTION] = (T0 + dt.timedelta(minutes=2)).isoformat()
    assert strategy._enter(_detection(at=T0 + dt.timedelta(minutes=1))) == []
    assert strategy._enter(_detection(at=T0 + dt.timedelta(minutes=3)))


def test_the_one_second_quotes_refresh_the_mid_of_a_traded_contract_only_when_sane():
    strategy = _strategy()
    strategy._enter(_detection())
    other = "132611240245100"

    def quotes(at, bid, ask):
        ids = np.array([other, OPTION, "132611240244900"], dtype="U20")
        bid, ask = np.array([50.0, bid, 80.0]), np.array([50.1, ask, 80.1])
        return QuoteSnapshot("NIFTY", at, at, ids, bid, ask, np.full(3, 650), np.full(3, 650))

    strategy.on_quotes(quotes(T0, 101.0, 101.2))
    assert strategy.last_mid == {OPTION: Decimal("101.10")}  # the traded contract's only
    strategy.on_quotes(quotes(T0 + dt.timedelta(seconds=1), 103.0, 102.0))  # crossed: kept as it was
    strategy.on_quotes(quotes(T0 + dt.timedelta(seconds=2), 0.0, 102.0))  # no bid: kept as it was
    assert strategy.last_mid == {OPTION: Decimal("101.10")}
    strategy.on_quotes(quotes(T0 + dt.timedelta(seconds=3), 98.0, 98.1))
    assert strategy.last_mid == {OPTION: Decimal("98.05")}
