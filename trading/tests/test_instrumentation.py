"""The one-line metric calls on the order path move the metrics the engine
exports (quanthub/metrics.py), driven through the real order manager and Kill All."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from prometheus_client import REGISTRY

from trading.conftest import open_legs, quote
from trading.models import Order
from trading.orders import flatten
from trading.orders.root import build_order_path
from trading.orders.tests.test_manager import submit

pytestmark = pytest.mark.django_db(transaction=True)


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_broker_reject_counts_by_its_code_and_its_state(oms, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    rejects, rejected = (
        value("quanthub_order_rejects_total", code="DH-905"),
        value("quanthub_order_states_total", state="REJECTED"),
    )
    order = await submit(oms, option, quantity=1)
    assert order.state == Order.State.REJECTED
    assert value("quanthub_order_rejects_total", code="DH-905") == rejects + 1
    assert value("quanthub_order_states_total", state="REJECTED") == rejected + 1


async def test_an_acknowledged_order_is_timed_from_its_snapshot(oms, book, clock, option):
    quote(book, clock, option, "99.95", "100.00")
    count = value("quanthub_snapshot_to_ack_seconds_count")
    filled = value("quanthub_order_states_total", state="FILLED")
    snapshot_at = clock.now() - dt.timedelta(milliseconds=40)
    order = await submit(oms, option, snapshot_at=snapshot_at, limit_price=Decimal("100.00"))
    assert order.state == Order.State.FILLED
    assert value("quanthub_snapshot_to_ack_seconds_count") == count + 1
    assert value("quanthub_snapshot_to_ack_seconds_sum") >= 0.04
    assert value("quanthub_order_states_total", state="FILLED") == filled + 1


async def test_kill_all_records_its_duration_and_whether_it_ended_flat(oms, book, demo_market):
    await open_legs(oms, book, 2)
    runs = value("quanthub_kill_all_duration_seconds_count")
    path = await sync_to_async(build_order_path)("default", clock=oms.clock, book=book, broker=oms.broker)
    summary = await flatten.kill_all(path, actor="risk1", reason="test", deadline_s=10)
    assert summary.flat
    assert value("quanthub_kill_all_duration_seconds_count") == runs + 1
    assert value("quanthub_kill_all_not_flat") == 0
