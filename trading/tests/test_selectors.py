from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading import selectors
from trading.conftest import open_legs as _open_legs
from trading.models import Position, Trade
from trading.templatetags.qh import fixed, rupees, thousands

money = st.decimals(min_value=-(10**6), max_value=10**6, places=2, allow_nan=False, allow_infinity=False)


@given(st.lists(money, max_size=60))
def test_max_drawdown_is_the_worst_fall_from_a_peak(curve):
    worst, series = selectors.drawdown(curve)
    brute = max(
        [Decimal(0)] + [max([Decimal(0), *curve[: i + 1]]) - curve[i] for i in range(len(curve))],
    )
    assert worst == brute >= 0
    assert len(series) == len(curve) and all(d <= 0 for d in series)


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (Decimal("0"), "₹0.00"),
        (Decimal("999.5"), "₹999.50"),
        (Decimal("1234567.891"), "₹12,34,567.89"),
        (Decimal("-25000"), "−₹25,000.00"),
        (None, "—"),
        ("nonsense", "—"),
    ],
)
def test_rupees_use_indian_grouping(amount, text):
    assert rupees(amount) == text


@given(
    st.decimals(min_value=-(10**7), max_value=10**7, places=3, allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(10**9), max_value=10**9),
    st.sampled_from([0, 1, 2]),
)
def test_the_chains_number_filters_read_as_floatformat_and_intcomma(amount, count, places):
    from django.contrib.humanize.templatetags.humanize import intcomma
    from django.template.defaultfilters import floatformat

    assert fixed(amount, places) == floatformat(amount, places)
    assert thousands(count) == intcomma(count)
    assert fixed(None) == floatformat(None, 2) == ""


@pytest.mark.django_db(transaction=True)
async def test_the_overview_adds_up_closed_trades_and_open_positions(oms, book, demo_market):
    from asgiref.sync import sync_to_async

    from trading.orders.requests import request_exit

    await _open_legs(oms, book, 3)
    first = await Position.objects.exclude(net_quantity=0).order_by("pk").afirst()
    await sync_to_async(request_exit, thread_sensitive=False)(first.pk, "test")
    ov = await sync_to_async(selectors.overview)()
    trades = [t async for t in Trade.objects.all()]
    open_rows = [p async for p in Position.objects.exclude(net_quantity=0)]
    assert len(trades) == 1 and len(open_rows) == 2 and ov.open_positions == 2 and ov.trades_today == 1
    assert ov.net_pnl == ov.gross_pnl - ov.charges
    expected_net = trades[0].net_pnl + sum(p.realised_pnl + p.unrealised_pnl - p.charges for p in open_rows)
    assert ov.net_pnl == expected_net
    assert ov.equity[-1][1] == expected_net  # the curve ends at today's net
    rows = await sync_to_async(selectors.open_positions)()
    assert {r.position.pk for r in rows} == {p.pk for p in open_rows}
    assert all(r.lots == abs(r.position.net_quantity) // r.position.instrument.lot_size for r in rows)


@pytest.mark.django_db(transaction=True)
async def test_the_panels_of_a_heartbeat_read_the_open_positions_once(oms, book, demo_market):
    from asgiref.sync import sync_to_async
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from trading import dashboard
    from trading.models import Strategy

    await _open_legs(oms, book, 3)
    keys = list(dashboard.EVENT_PANELS["heartbeat"])

    def render() -> list[str]:
        dashboard.render_parts(keys, {})  # the equity curve's minutes are read once a minute
        with CaptureQueriesContext(connection) as queries:
            dashboard.render_parts(keys, {})
        return [q["sql"] for q in queries.captured_queries]

    first = await sync_to_async(render)()
    reads = [sql for sql in first if sql.startswith('SELECT "trading_position"."id"')]
    assert len(reads) == 1  # overview, positions, risk and scorecards share one read
    await Strategy.objects.acreate(key="another", name="Another")
    await Strategy.objects.acreate(key="third", name="Third")
    assert len(await sync_to_async(render)()) == len(first)  # more strategies, no more queries
