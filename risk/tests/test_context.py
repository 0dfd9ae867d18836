from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db.models import F, Sum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quanthub.clock import IST
from risk.checks import Limits
from risk.context import (
    GateBasis,
    daily_net_pnl,
    daily_pnl_parts_and_any_live,
    open_lots,
    open_positions_pnl,
)
from risk.gate import RiskGate
from trading.brokers.base import Funds
from trading.models import Order, Position, Signal, Strategy, Trade
from trading.strategies.base import OrderIntent

NOW = dt.datetime(2026, 11, 24, 10, 30, tzinfo=IST)
gate = RiskGate()


def _instruments():
    from marketdata.models import Instrument

    calls = list(Instrument.objects.filter(kind="CE").order_by("security_id")[:3])
    future = Instrument.objects.filter(kind="FUT").first()
    return calls, future


def _trade(instrument, net, closed_at, account="default"):
    return Trade.objects.create(
        account=account,
        instrument=instrument,
        direction="LONG",
        quantity=instrument.lot_size,
        entry_price=Decimal("100"),
        exit_price=Decimal("101"),
        opened_at=closed_at - dt.timedelta(minutes=5),
        closed_at=closed_at,
        gross_pnl=net,
        charges=Decimal("0"),
        net_pnl=net,
        risk_amount=Decimal("0"),
    )


def _orm_daily_net_pnl(account, now):
    """The two ORM aggregates daily_net_pnl used to run, kept here as the reference."""
    start = dt.datetime.combine(now.astimezone(IST).date(), dt.time(0), tzinfo=IST)
    closed = Trade.objects.filter(account=account, closed_at__gte=start).aggregate(n=Sum("net_pnl"))["n"] or 0
    open_ = (
        Position.objects.filter(account=account, opened_at__gte=start)
        .exclude(net_quantity=0)
        .aggregate(n=Sum(F("realised_pnl") + F("unrealised_pnl") - F("charges")))["n"]
        or 0
    )
    return Decimal(closed) + Decimal(open_)


@pytest.mark.django_db
def test_it_sums_todays_closed_and_open_pnl_exactly_like_the_orm(demo_market):
    (a, b, c), _ = _instruments()
    assert daily_net_pnl("default", NOW) == Decimal("0")
    _trade(a, Decimal("-1234.57"), NOW - dt.timedelta(hours=1))
    _trade(b, Decimal("310.10"), NOW - dt.timedelta(minutes=1))
    _trade(c, Decimal("-99999.99"), NOW - dt.timedelta(days=1))  # yesterday: not counted
    _trade(c, Decimal("-5000.00"), NOW - dt.timedelta(minutes=2), account="other")  # another account
    common = {"account": "default", "opened_at": NOW - dt.timedelta(minutes=30)}
    Position.objects.create(
        instrument=a,
        net_quantity=65,
        realised_pnl=Decimal("10.05"),
        unrealised_pnl=Decimal("-333.33"),
        charges=Decimal("21.17"),
        **common,
    )
    Position.objects.create(  # flat: its P&L is in a trade already
        instrument=b, net_quantity=0, realised_pnl=Decimal("500"), charges=Decimal("1"), **common
    )
    got = daily_net_pnl("default", NOW)
    assert got == _orm_daily_net_pnl("default", NOW)
    assert got == Decimal("-1234.57") + Decimal("310.10") + Decimal("10.05") - Decimal("333.33") - Decimal("21.17")
    assert got.as_tuple().exponent == -2
    # The engine's question of every second: the same figure, and whether any order is live.
    from trading.orders.manager import LIVE_STATES

    def daily_net_pnl_and_any_live(*args):
        closed, open_, live = daily_pnl_parts_and_any_live(*args)
        return closed + open_, live

    assert daily_net_pnl_and_any_live("default", NOW, LIVE_STATES) == (got, False)
    strategy = Strategy.objects.create(key="ctx", name="ctx")
    order = Order.objects.create(
        account="other",
        client_order_id="ctx-1",
        instrument=a,
        strategy=strategy,
        side="BUY",
        quantity=a.lot_size,
        limit_price=Decimal("100"),
        state=Order.State.OPEN,
    )
    assert daily_net_pnl_and_any_live("default", NOW, LIVE_STATES) == (got, False)  # another account's
    Order.objects.filter(pk=order.pk).update(account="default")
    for state, live in (
        (Order.State.OPEN, True),
        (Order.State.PARTIAL, True),
        (Order.State.UNKNOWN, True),
        (Order.State.FILLED, False),
        (Order.State.REJECTED, False),
        (Order.State.NEW, False),
    ):
        Order.objects.filter(pk=order.pk).update(state=state)
        assert daily_net_pnl_and_any_live("default", NOW, LIVE_STATES) == (got, live), state


@pytest.mark.django_db
def test_the_basis_counts_lots_per_signal_and_strategy_like_open_lots(demo_market):
    (a, b, _), future = _instruments()
    strategy = Strategy.objects.get(key="vol_oi")
    signal = Signal.objects.create(strategy=strategy, instrument=a, key="sig-a", detected_at=NOW)
    Position.objects.create(instrument=a, strategy=strategy, signal=signal, net_quantity=2 * a.lot_size)
    Position.objects.create(instrument=future, strategy=strategy, signal=signal, net_quantity=-future.lot_size)
    Order.objects.create(
        client_order_id="QHTEST1",
        instrument=b,
        strategy=strategy,
        side="BUY",
        purpose="ENTRY",
        quantity=3 * b.lot_size,
        filled_quantity=b.lot_size,
        state="OPEN",
    )
    basis = GateBasis.load(account="default", now=NOW)
    for key in ("sig-a", "unknown"):
        expected = open_lots(account="default", lot_size_of=lambda i: i.lot_size, signal_key=key)
        assert basis.lots_by_signal.get(key, 0) == expected
    expected = open_lots(account="default", lot_size_of=lambda i: i.lot_size, strategy_key="vol_oi")
    # Option lots only: the future hedging sig-a counts against its own hedge limit.
    assert basis.lots_by_strategy["vol_oi"] == expected == 2 + 2
    assert basis.lots_by_signal["sig-a"] == 2 and basis.hedge_lots_by_signal == {"sig-a": 1}


def _intent(security_id, lots, *, signal="sig-1", purpose="ENTRY", reduces=False):
    return OrderIntent(
        "vol_oi", security_id, "BUY", lots, 65, purpose, Decimal("100"), signal_key=signal, reduces_exposure=reduces
    )


@pytest.mark.django_db
def test_intents_of_one_snapshot_do_not_share_the_same_room(demo_market):
    """Two probes on one signal in one snapshot: the second sees the first's lots and margin."""
    from marketdata.book import Quote

    (a, _, _), _ = _instruments()
    limits = Limits(max_lots_per_signal=5)
    quote = Quote(a.security_id, 99.95, 100.05, 100_000, 100_000, 100.0, NOW)
    funds = Funds(available=Decimal("1000000"), utilised=Decimal("0"))
    basis = GateBasis(now=NOW, limits=limits, funds=funds)

    def check(intent):
        ctx = basis.context(intent, instrument=a, now=NOW, quote=quote)
        decision = gate.check(intent, ctx)
        if decision.allowed:
            basis.record(intent, decision.lots, ctx)
        return decision, ctx

    first, ctx = check(_intent(a.security_id, 3))
    assert first.allowed and first.lots == 3
    second, ctx2 = check(_intent(a.security_id, 3))
    assert second.allowed and second.lots == 2 and ctx2.lots_for_signal == 3
    assert ctx2.margin_utilised == ctx.margin_per_lot * 3
    third, _ = check(_intent(a.security_id, 1))
    assert not third.allowed and third.rule == "position_limits"
    # An exit is never held back, and frees no room until the next snapshot.
    exit_, _ = check(_intent(a.security_id, 5, purpose="EXIT", reduces=True))
    assert exit_.allowed and basis.lots_by_signal["sig-1"] == 5


@pytest.mark.django_db
def test_the_basis_reads_the_state_event_day_and_breaker(demo_market):
    from risk.models import BreakerTrip, EventDay, TradingState

    (a, _, _), _ = _instruments()
    TradingState.objects.update_or_create(account="default", defaults={"state": "REDUCING"})
    EventDay.objects.create(date=NOW.date(), kind="RBI_POLICY", action="NO_NEW_ENTRIES")
    BreakerTrip.objects.create(account="default", breaker="vix", reason="test", tripped_at=NOW)
    basis = GateBasis.load(account="default", now=NOW)
    assert (basis.trading_state, basis.event_action, basis.vix_breaker) == ("REDUCING", "NO_NEW_ENTRIES", True)
    decision = gate.check(_intent(a.security_id, 1), basis.context(_intent(a.security_id, 1), instrument=a, now=NOW))
    assert not decision.allowed and decision.rule == "trading_state"


_PAISE = st.decimals(min_value=Decimal("-100000000"), max_value=Decimal("100000000"), places=2, allow_nan=False)


@pytest.mark.django_db
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.integers(-4, 4),  # lots held: 0 is flat
            _PAISE,  # realised
            _PAISE,  # unrealised (the mark)
            _PAISE.map(abs),  # charges
            st.sampled_from(["today", "midnight", "yesterday", None]),  # opened
        ),
        max_size=6,
    ),
    closed=st.lists(_PAISE, max_size=3),
)
def test_the_open_positions_part_summed_in_memory_is_the_statements_figure(demo_market, rows, closed):
    """What the engine carries across its marks (``open_positions_pnl`` over the rows
    it marked) is, to the last digit, what the books' statement returns for them."""
    Position.objects.all().delete()
    Trade.objects.all().delete()
    (a, _, _), _ = _instruments()
    from marketdata.models import Instrument

    instruments = list(Instrument.objects.filter(kind__in=["CE", "PE"]).order_by("security_id")[: len(rows)])
    midnight = dt.datetime.combine(NOW.date(), dt.time(0), tzinfo=IST)
    opened_at = {"today": NOW, "midnight": midnight, "yesterday": midnight - dt.timedelta(seconds=1), None: None}
    marked = [
        Position(
            account="default",
            instrument=instrument,
            net_quantity=lots * instrument.lot_size,
            average_price=Decimal("100.0000"),
            realised_pnl=realised,
            unrealised_pnl=unrealised,
            charges=charges,
            opened_at=opened_at[when],
        )
        for instrument, (lots, realised, unrealised, charges, when) in zip(instruments, rows, strict=True)
    ]
    Position.objects.bulk_create(marked)
    for n, net in enumerate(closed):
        _trade(a, net, NOW - dt.timedelta(minutes=n + 1))
    closed_part, open_part, _ = daily_pnl_parts_and_any_live("default", NOW, ())
    read_back = list(Position.objects.filter(account="default").exclude(net_quantity=0))
    # The rows as marked in memory and as the database returns them.
    assert str(open_positions_pnl(marked, NOW)) == str(open_part)
    assert str(open_positions_pnl(read_back, NOW)) == str(open_part)
    assert str(closed_part + open_part) == str(daily_net_pnl("default", NOW))
