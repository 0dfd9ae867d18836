"""The gate's basis held across snapshots: the trading state, event days, breakers and
open lots as last read, with today's carried P&L, until this process writes a table they
read (or a wall-clock second passes, for another process's write). Every basis the gate
uses, held or read, is what a fresh read of the books returns at that moment."""

from __future__ import annotations

import copy
import datetime as dt
import sys
from decimal import Decimal

import pytest
from django.db import OperationalError, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata.models import Instrument
from quanthub.clock import IST
from risk.context import BasisReads, GateBasis
from risk.models import BreakerTrip, EventDay, TradingState
from trading import writes
from trading.conftest import DAY, sim_engine
from trading.engine import config
from trading.models import Order, Position, Signal, Strategy, Trade

# Out of a transaction, as the engine's database thread reads: what is read inside one is not held.
pytestmark = pytest.mark.django_db(transaction=True)
NOW = dt.datetime.combine(DAY, dt.time(10, 0), tzinfo=IST)
FIELDS = (
    "trading_state",
    "event_action",
    "vix_breaker",
    "daily_net_pnl",
    "lots_by_signal",
    "lots_by_strategy",
    "hedge_lots_by_signal",
)


def _seen(basis: GateBasis) -> tuple:
    """What the gate reads of a basis (the money as text: to its last digit)."""
    return tuple(str(v) if k == "daily_net_pnl" else v for k, v in ((f, getattr(basis, f)) for f in FIELDS))


def _engine():
    engine, _ = sim_engine(dt.time(10, 0), dt.time(10, 5))
    engine._config_seen = (config.generation(), float("inf"))  # not started: no configuration to follow
    return engine


def _option(n: int = 0) -> Instrument:
    return Instrument.objects.filter(kind="CE").order_by("security_id")[n]


def _signal(n: int, option: Instrument) -> Signal:
    return Signal.objects.get_or_create(
        key=f"vol_oi:{option.security_id}:held{n}",
        defaults={"strategy": Strategy.objects.get(key="vol_oi"), "instrument": option, "detected_at": NOW},
    )[0]


def _entry(n: int, lots: int, state=Order.State.OPEN) -> Order:
    option = _option(n % 3)
    return Order.objects.create(
        instrument=option,
        strategy=Strategy.objects.get(key="vol_oi"),
        signal=_signal(n, option),
        client_order_id=f"QHHELD{n:010d}",
        side=Order.Side.BUY,
        quantity=option.lot_size * lots,
        limit_price=Decimal("100.00"),
        state=state,
    )


def _position(n: int, lots: int) -> Position:
    option = _option(n % 3)
    position, _ = Position.objects.update_or_create(
        account="default",
        instrument=option,
        defaults={
            "strategy": Strategy.objects.get(key="vol_oi"),
            "signal": _signal(n, option),
            "net_quantity": option.lot_size * lots,
            "average_price": Decimal("100.0000"),
            "opened_at": NOW,
            "realised_pnl": Decimal("0.00"),
            "unrealised_pnl": Decimal("0.00"),
            "charges": Decimal("20.00"),
        },
    )
    return position


def test_the_basis_is_held_until_a_table_it_reads_is_written_and_then_read_with_the_write(enabled, monkeypatch):
    monkeypatch.setattr(writes, "RECHECK_S", 3600.0)  # however slow this machine: only writes count
    engine = _engine()
    limits = engine._limits
    engine._second_reads(NOW)
    held = engine._basis_held(NOW, None, limits)
    assert held is not None and held.trading_state == "ACTIVE" and held.daily_net_pnl == Decimal("0.00")
    assert engine._basis_held(NOW, None, None) is None  # limits not read at this snapshot: read them

    # A strategy's own state, the anomaly models, the audit chain: not what the basis reads.
    Strategy.objects.filter(key="vol_oi").update(state={"x": 1})
    assert engine._held_basis_reads(NOW) is not None

    position = _position(1, 2)
    option = position.instrument
    writes_and_what_they_change = [
        (
            lambda: TradingState.objects.update_or_create(account="default", defaults={"state": "HALTED"}),
            lambda b: b.trading_state == "HALTED",
        ),
        (
            lambda: EventDay.objects.create(date=DAY, kind=EventDay.Kind.OTHER, action=EventDay.Action.REDUCE_ONLY),
            lambda b: b.event_action == "REDUCE_ONLY",
        ),
        (
            lambda: BreakerTrip.objects.create(breaker="vix", tripped_at=NOW, reason="VIX up 20%"),
            lambda b: b.vix_breaker,
        ),
        (lambda: _entry(2, 3), lambda b: b.lots_by_signal.get(f"vol_oi:{_option(2).security_id}:held2", 0) == 3),
        (
            lambda: Position.objects.filter(pk=position.pk).update(net_quantity=option.lot_size * 4),
            lambda b: b.lots_by_signal.get(f"vol_oi:{option.security_id}:held1", 0) == 4,
        ),
        (  # the exchange revised the lot size: the same quantity is half the lots
            lambda: Instrument.objects.filter(pk=option.pk).update(lot_size=option.lot_size * 2),
            lambda b: b.lots_by_signal.get(f"vol_oi:{option.security_id}:held1", 0) == 2,
        ),
    ]
    for write, changed in writes_and_what_they_change:
        engine._second_reads(NOW)
        before = engine._held_basis_reads(NOW)
        assert before is not None
        assert not changed(GateBasis.load(account="default", now=NOW, limits=limits, reads=before, pnl=Decimal(0)))
        write()
        assert engine._held_basis_reads(NOW) is None, "written by this process: read again"
        basis = engine._load_basis(NOW, None, limits)
        assert changed(basis) and _seen(basis) == _seen(GateBasis.load(account="default", now=NOW, limits=limits))
        assert engine._held_basis_reads(NOW) is not None  # and held from this read on

    # The engine's own marks move nothing the reads hold.
    with writes.marking():
        Position.objects.filter(pk=position.pk).update(last_price=Decimal("101.00"))
    assert engine._held_basis_reads(NOW) is not None
    # A new day reads its own event days; another process's write is read within the window.
    assert engine._held_basis_reads(NOW + dt.timedelta(days=1)) is None
    monkeypatch.setattr(writes, "RECHECK_S", 0.0)
    assert engine._held_basis_reads(NOW) is None


def test_a_read_that_fails_or_may_roll_back_is_not_held(enabled, monkeypatch):
    monkeypatch.setattr(writes, "RECHECK_S", 3600.0)
    engine = _engine()
    real = BasisReads.read

    def failing(account, day):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(BasisReads, "read", failing)
    with pytest.raises(OperationalError):
        engine._second_reads(NOW)
    assert engine._basis_reads is None  # nothing half-read is held
    monkeypatch.setattr(BasisReads, "read", real)

    # Read inside a transaction that wrote the state and then rolled back: not held.
    with pytest.raises(RuntimeError), transaction.atomic():
        TradingState.objects.update_or_create(account="default", defaults={"state": "HALTED"})
        assert engine._load_basis(NOW, None, engine._limits).trading_state == "HALTED"
        raise RuntimeError("rolled back")
    assert engine._held_basis_reads(NOW) is None
    assert engine._load_basis(NOW, None, engine._limits).trading_state == "ACTIVE"


ACTIONS = st.one_of(
    st.tuples(st.just("second")),
    st.tuples(st.just("check")),
    st.tuples(st.just("state"), st.sampled_from(["ACTIVE", "REDUCING", "HALTED"])),
    st.tuples(st.just("event"), st.sampled_from(["NO_NEW_ENTRIES", "REDUCE_ONLY", "HALT"])),
    st.tuples(st.just("breaker"), st.booleans()),
    st.tuples(st.just("entry"), st.integers(0, 5), st.integers(1, 4)),
    st.tuples(st.just("fill"), st.integers(0, 5)),
    st.tuples(st.just("position"), st.integers(0, 5), st.integers(-3, 3)),
    st.tuples(st.just("mark"), st.integers(-500, 500)),
    st.tuples(st.just("trade"), st.integers(-5000, 5000)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=st.lists(ACTIONS, min_size=1, max_size=30))
def test_every_basis_held_or_read_is_what_the_books_say_after_any_writes(enabled, monkeypatch, actions):
    """Any sequence of the writes the basis reads (and the marks and trades today's P&L
    sums), second's reads and gate builds: the basis the engine builds is, field by
    field, the one a fresh read returns."""
    monkeypatch.setattr(writes, "RECHECK_S", 3600.0)
    engine = _engine()
    limits = engine._limits
    n_orders = Order.objects.count()
    for i, action in enumerate(actions):
        now = NOW + dt.timedelta(seconds=i)
        kind = action[0]
        if kind == "second":
            engine._second_reads(now)
        elif kind == "check":
            basis = engine._basis_held(now, None, limits) or engine._load_basis(now, None, limits)
            assert _seen(basis) == _seen(GateBasis.load(account="default", now=now, limits=limits))
        elif kind == "state":
            TradingState.objects.update_or_create(account="default", defaults={"state": action[1]})
        elif kind == "event":
            EventDay.objects.update_or_create(date=DAY, kind=EventDay.Kind.OTHER, defaults={"action": action[1]})
        elif kind == "breaker":
            if action[1]:
                BreakerTrip.objects.create(breaker="vix", tripped_at=now, reason="VIX")
            else:
                BreakerTrip.objects.filter(cleared_at__isnull=True).update(cleared_at=now)
        elif kind == "entry":
            n_orders += 1
            _entry(n_orders * 10 + action[1], action[2])
        elif kind == "fill":
            order = Order.objects.filter(state=Order.State.OPEN).order_by("pk")[action[1] : action[1] + 1].first()
            if order is not None:
                Order.objects.filter(pk=order.pk).update(
                    state=Order.State.FILLED, filled_quantity=order.quantity, average_price=Decimal("100.00")
                )
        elif kind == "position":
            _position(action[1], action[2])
        elif kind == "mark":
            with writes.marking():
                Position.objects.exclude(net_quantity=0).update(unrealised_pnl=Decimal(action[1]))
        elif kind == "trade":
            Trade.objects.create(
                account="default",
                instrument=_option(),
                direction="LONG",
                quantity=_option().lot_size,
                entry_price=Decimal("100"),
                exit_price=Decimal("101"),
                opened_at=now,
                closed_at=now,
                gross_pnl=Decimal(action[1]),
                charges=Decimal("0"),
                net_pnl=Decimal(action[1]),
                risk_amount=Decimal("0"),
            )
    basis = engine._basis_held(now, None, limits) or engine._load_basis(now, None, limits)
    assert _seen(basis) == _seen(GateBasis.load(account="default", now=now, limits=limits))


async def test_a_session_gates_every_intent_on_the_books_as_they_stand_mostly_without_a_read(enabled, monkeypatch):
    """The running engine on the simulator and the paper broker, probes, scales and exits:
    each basis the gate uses is, at its first intent, what a fresh read of the books
    returns then; most are built from what the engine holds, with no trip to the
    database; and while the engine runs, a thread waiting for the GIL waits at most
    ``GIL_SWITCH_S`` (the interval before it is back after the engine stops)."""
    from asgiref.sync import sync_to_async

    from trading.engine import engine as engine_module

    monkeypatch.setattr(writes, "RECHECK_S", 3600.0)
    before_interval = sys.getswitchinterval()
    engine, _ = await sync_to_async(sim_engine)(dt.time(9, 15), dt.time(9, 45))
    first_use: dict[int, tuple] = {}
    checked, held, intervals = [], [], []
    real_context, real_gate, real_held = GateBasis.context, engine._gate, engine._basis_held

    def context(self, intent, **kwargs):
        if id(self) not in first_use:  # before ``record`` adds this snapshot's intents to it
            first_use[id(self)] = (self.now, copy.deepcopy(_seen(self)))
        return real_context(self, intent, **kwargs)

    async def gate(loaded, intent, intent_at, started):
        intervals.append(sys.getswitchinterval())
        basis = engine._basis
        passed = await real_gate(loaded, intent, intent_at, started)
        basis = basis or engine._basis
        if basis is not None and id(basis) in first_use and id(basis) not in checked:
            checked.append(id(basis))
            now, seen = first_use[id(basis)]
            fresh = await sync_to_async(GateBasis.load)(account=engine.account, now=now, limits=engine._limits)
            assert seen == _seen(fresh), (now, intent)
        return passed

    def basis_held(now, funds, limits):
        basis = real_held(now, funds, limits)
        held.append(basis is not None)
        return basis

    monkeypatch.setattr(GateBasis, "context", context)
    monkeypatch.setattr(engine, "_gate", gate)
    monkeypatch.setattr(engine, "_basis_held", basis_held)
    stats = await engine.run()

    assert stats.orders >= 4 and len(checked) >= 4, (stats.orders, len(checked))
    assert sum(held) > len(held) / 2, held  # most intents waited for no read
    assert set(intervals) == {min(before_interval, engine_module.GIL_SWITCH_S)}
    assert sys.getswitchinterval() == before_interval
