"""Crash safety, proven: 200+ SIGKILLs at every point of the order path, and a
state machine over the order lifecycle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import IntegrityError, transaction
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from quanthub.clock import IST, SimulatedClock
from trading.brokers.base import BrokerTrade, Side
from trading.models import Fill, Order
from trading.orders.manager import ALLOWED, OrderManager

HARNESS = Path(__file__).with_name("crash_harness.py")


def _database_for_harness(tmp_path):
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        import psycopg

        name = f"qh_crash_{uuid.uuid4().hex[:8]}"
        base = url.rsplit("/", 1)[0]
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"{base}/{name}", lambda: _drop(base, name)
    return f"sqlite:///{tmp_path / 'crash.sqlite3'}", lambda: None


def _drop(base, name):
    import psycopg

    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_200_kills_leave_no_duplicate_orphan_or_unresolved_order(tmp_path):
    url, cleanup = _database_for_harness(tmp_path)
    env = {**os.environ, "DATABASE_URL": url, "QUANTHUB_VAR_DIR": str(tmp_path), "LOG_LEVEL": "error"}
    env.pop("REDIS_URL", None)
    try:
        out = subprocess.run(
            [sys.executable, str(HARNESS), "--kills", "200", "--seed", "11"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        cleanup()
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["kills"] >= 200
    assert set(result["by_point"]) == {
        "oms.before_commit",
        "oms.after_commit",
        "oms.before_broker_call",
        "broker.before_commit",
        "broker.after_commit",
        "oms.after_ack",
    }
    assert result["worst"] == {
        "stuck": 0,
        "unresolved": 0,
        "duplicates": 0,
        "orphans": 0,
        "lost": 0,
        "unfilled_trades": 0,
        "position_gap": 0,
        "breaks": 0,
    }
    assert result["broker_orders"] > 100


class OrderLifecycle(RuleBasedStateMachine):
    """Random broker events applied through the OMS's own state changes: no
    illegal transition is accepted, terminal states stay terminal, fills never
    exceed the quantity, and a trade applied twice counts once."""

    orders = Bundle("orders")

    @initialize()
    def setup(self):
        from marketdata.models import Instrument

        self.instrument = Instrument.objects.filter(kind="CE").first()
        self.oms = OrderManager(
            broker=None,
            limiter=None,
            clock=SimulatedClock(__import__("datetime").datetime(2026, 11, 24, 10, tzinfo=IST)),
        )
        self.model: dict[int, dict] = {}

    @rule(target=orders, lots=st.integers(1, 4))
    def create(self, lots):
        order = self.oms._create(
            client_order_id=uuid.uuid4().hex[:20].upper(),
            instrument=self.instrument,
            side="BUY",
            quantity=lots * self.instrument.lot_size,
            limit_price=Decimal("100"),
        )
        self.model[order.pk] = {"state": Order.State.NEW, "quantity": order.quantity, "filled": 0, "trades": set()}
        return order.pk

    @rule(pk=orders, new=st.sampled_from(Order.State.values))
    def transition(self, pk, new):
        before = self.model[pk]["state"]
        moved = self.oms._transition(pk, {before}, new, audit=False)
        assert moved == (new in ALLOWED[before])
        if moved:
            self.model[pk]["state"] = new

    @rule(pk=orders, trade=st.integers(0, 6), lots=st.integers(1, 2))
    def fill(self, pk, trade, lots):
        model = self.model[pk]
        quantity = lots * self.instrument.lot_size
        trade_id = f"{pk}-{trade}"
        fresh = trade_id not in model["trades"]
        fits = model["filled"] + quantity <= model["quantity"]
        broker_trade = BrokerTrade(
            trade_id,
            "B",
            "C",
            self.instrument.security_id,
            "NSE_FNO",
            Side.BUY,
            quantity,
            Decimal("100"),
            self.oms.clock.now(),
        )
        try:
            with transaction.atomic():
                self.oms._record_trades(pk, [broker_trade])
        except IntegrityError:
            assert fresh and not fits  # only an overfill is refused, and nothing of it stays
            return
        if fresh and fits:
            model["filled"] += quantity
            model["trades"].add(trade_id)

    @invariant()
    def database_matches_the_model(self):
        for pk, model in self.model.items():
            order = Order.objects.get(pk=pk)
            assert order.state == model["state"]
            assert order.filled_quantity == model["filled"] <= order.quantity
            assert Fill.objects.filter(order_id=pk).count() == len(model["trades"])


@pytest.mark.django_db
def test_the_order_lifecycle_state_machine(demo_market):
    run = OrderLifecycle.TestCase
    run.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
    run().runTest()
