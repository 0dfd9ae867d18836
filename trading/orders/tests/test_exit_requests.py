"""Exiting one position while the engine trades: the request is handed to the engine
(the one sender for the account), which works it on its own order path; the
strategy hears the fill and never sells the same units again."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest
from asgiref.sync import sync_to_async
from rest_framework.test import APIClient

from trading.conftest import sim_engine
from trading.models import FlattenRequest, Order, PaperPosition, Position

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_exit_requested_mid_trade_is_worked_by_the_engine_and_never_repeated(enabled, trader):
    first, clock = await sync_to_async(sim_engine)(dt.time(9, 15), dt.time(9, 17, 30))
    await first.run()  # stops at 09:17:30 with the 09:16:30 probe open
    engine, _ = await sync_to_async(sim_engine)(dt.time(9, 17, 31), dt.time(9, 21), clock=clock)
    engine.feed.speed = 5.0  # ~5 simulated seconds per wall second: the request meets the open trade
    await engine.start()  # a fresh ACTIVE heartbeat: the API hands the exit to this engine

    option = await Position.objects.select_related("instrument", "signal").aget(
        instrument__kind="CE", net_quantity__gt=0
    )
    client = APIClient()
    client.force_authenticate(trader)

    async def loop():
        try:
            async for item in engine.feed:  # what Engine.run does after start()
                await engine.tick(item)
        finally:
            await engine.shutdown()

    began = time.monotonic()
    running = asyncio.ensure_future(loop())
    response = await sync_to_async(client.post, thread_sensitive=False)(f"/api/v1/positions/{option.pk}/exit/")
    answered = time.monotonic() - began
    await running
    assert response.status_code == 200, response.content
    result = response.json()
    assert result["worked_by"] == engine.engine_id and result["flat"] is True and result["filled"] >= 1, result
    request = await FlattenRequest.objects.aget(pk=result["request"])
    # Taken within a second of being asked (the engine looks once a wall-clock second).
    assert (request.taken_at is not None) and answered < 10

    sells = await sync_to_async(list)(
        Order.objects.filter(instrument=option.instrument, side="SELL").values_list("purpose", "state")
    )
    # The requested exit filled, and the strategy's take-profit (09:20) did not sell the units again.
    assert sells == [(Order.Purpose.EXIT, Order.State.FILLED)]
    assert (await Position.objects.aget(pk=option.pk)).net_quantity == 0
    paper = await PaperPosition.objects.filter(security_id=option.instrument.security_id).afirst()
    assert paper.net_quantity == 0
    # The strategy heard the fill: it holds nothing of that option any more.
    assert engine.strategies[0].strategy.trades[option.signal.key].held == 0
