"""Exiting one position on request while the engine trades: the engine sends the
exit, the strategy hears the fill, and never sells the same units again."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from rest_framework.test import APIClient

from quanthub.clock import IST
from trading.models import Order, PaperPosition, Position
from trading.tests.test_engine import DAY, _engine, enabled  # noqa: F401  (shared fixture)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_exit_requested_mid_trade_is_sent_by_the_engine_and_never_repeated(enabled, trader):  # noqa: F811
    first, clock = await sync_to_async(_engine)(dt.time(9, 15), dt.time(9, 17, 30))
    await first.run()  # stops at 09:17:30 with the 09:16:30 probe open
    engine, _ = await sync_to_async(_engine)(dt.time(9, 17, 31), dt.time(9, 24), clock=clock)
    # A restart carries the market on where it stood (the informed flow under way goes on).
    engine.feed.resume(dt.datetime.combine(DAY, dt.time(9, 17, 31), tzinfo=IST), first.feed.get_state())
    await engine.start()  # a fresh ACTIVE heartbeat: the API leaves the sending to this engine

    option = await Position.objects.select_related("instrument", "signal").aget(
        instrument__kind="CE", net_quantity__gt=0
    )
    client = APIClient()
    client.force_authenticate(trader)
    response = await sync_to_async(client.post)(f"/api/v1/positions/{option.pk}/exit/")
    assert response.status_code == 202, response.content
    [requested] = response.json()["orders"]
    assert requested["state"] == "NEW" and requested["signal"] == option.signal.key

    try:
        async for item in engine.feed:  # what Engine.run does after start()
            await engine.tick(item)
    finally:
        await engine.shutdown()

    sells = await sync_to_async(list)(
        Order.objects.filter(instrument=option.instrument, side="SELL").values_list("client_order_id", "state")
    )
    # The requested exit filled, and the strategy's take-profit (09:20) did not sell the units again.
    assert sells == [(requested["client_order_id"], Order.State.FILLED)]
    assert (await Position.objects.aget(pk=option.pk)).net_quantity == 0
    paper = await PaperPosition.objects.filter(security_id=option.instrument.security_id).afirst()
    assert paper.net_quantity == 0
    # The strategy heard the fill: it holds nothing of that option any more.
    assert engine.strategies[0].strategy.trades[option.signal.key].held == 0
