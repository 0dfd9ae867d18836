"""A live session end to end, pointed at the local stand-in for Dhan: the broker
and the feed built by name (QUANTHUB_BROKER=dhan, QUANTHUB_FEED=dhan), the
engine trading through the order-update stream with LTP from the market feed,
surviving a dropped socket and a token renewal."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from marketdata.book import Quote, QuoteBook
from marketdata.feeds import build_feed
from marketdata.models import Instrument
from quanthub.clock import RealClock
from quanthub.dhan import packets
from quanthub.dhan.local import LocalDhan
from quanthub.dhan.tokens import TokenStore
from trading.brokers import build_broker
from trading.engine.engine import Engine
from trading.models import Order, Position

pytestmark = pytest.mark.django_db(transaction=True)


async def until(condition, within: float = 20.0) -> bool:
    check = sync_to_async(condition)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_session_trades_through_the_streams_and_survives_a_drop_and_a_renewal(settings, tmp_path, demo_market):
    local = await LocalDhan().start()
    for key, value in local.settings().items():
        setattr(settings, key, value)
    settings.QUANTHUB_BROKER = settings.QUANTHUB_FEED = "dhan"
    settings.DHAN_TOKEN_PATH = str(tmp_path / "token")
    settings.DHAN_STREAM_SILENCE_S = 2
    clock = RealClock()
    book = QuoteBook()
    broker = await sync_to_async(build_broker)(settings.QUANTHUB_BROKER, account="default", clock=clock, book=book)
    feed = await sync_to_async(build_feed)(settings.QUANTHUB_FEED, clock=clock)
    engine = await sync_to_async(Engine)(feed=feed, broker=broker, clock=clock, book=book)
    option = await Instrument.objects.select_related("underlying").filter(kind="CE", is_active=True).afirst()
    index_id = int(option.underlying.security_id)
    run = asyncio.create_task(engine.run())
    try:
        await asyncio.wait_for(engine.started.wait(), 10)
        assert await until(lambda: broker.push_healthy and feed.market_feed.healthy)
        assert local.pnl_exit and local.pnl_exit["enable_kill_switch"] is True  # the safety net, set at start

        async def tick(price: float) -> None:
            await local.push_feed(packets.ticker("IDX_I", index_id, price, int(time.time())))

        async def trade(n: int) -> Order:
            book.set(Quote(option.security_id, 99.95, 100.05, 650, 650, 100.0, clock.now()))
            order = await engine.oms.submit(
                instrument=option,
                side=Order.Side.BUY,
                quantity=option.lot_size,
                limit_price=Decimal("100.00"),
                check_slippage_rule=False,
            )
            assert await until(lambda: Order.objects.get(pk=order.pk).state == Order.State.FILLED), n
            return order

        await tick(24500.0)
        assert await until(lambda: engine.stats.ticks >= 1)
        await trade(1)
        assert broker.bridge.applied >= 2  # acknowledgement and fill came by push

        feeds_before, orders_before = local.feed_connects, local.order_connects
        await local.drop_sockets()
        assert await until(lambda: local.feed_connects > feeds_before and local.order_connects > orders_before)
        assert await until(lambda: broker.push_healthy and feed.market_feed.healthy)
        await trade(2)

        new = local.renew()
        await sync_to_async(TokenStore().write)(new)  # what refresh_dhan_token does at 08:50
        assert await until(lambda: local.logins[-1]["LoginReq"]["Token"] == new and broker.push_healthy)
        assert await until(lambda: local.feed_logins[-1]["token"] == new and feed.market_feed.healthy)
        await trade(3)
        ticks = engine.stats.ticks
        await tick(24510.0)
        assert await until(lambda: engine.stats.ticks > ticks)

        position = await Position.objects.aget(instrument=option)
        assert position.net_quantity == 3 * option.lot_size
        assert not run.done()  # nothing of this ended the engine
    finally:
        engine.stop()
        await feed.close()
        await asyncio.wait_for(run, 10)
        await local.stop()
