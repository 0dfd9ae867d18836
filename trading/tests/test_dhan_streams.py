"""The Live Order Update stream into the order manager, against a local server
speaking Dhan's order-update JSON (``quanthub.dhan.local``): fills in and out of
order, duplicates, a refused login, a silent socket, a drop mid-burst, a token
renewal. Everything on 127.0.0.1; nothing reaches the network."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async

from quanthub.dhan.errors import DhanAuthError
from quanthub.dhan.local import LocalDhan
from quanthub.dhan.session import dhan_client
from quanthub.dhan.streams import OrderUpdateStream
from quanthub.dhan.tokens import TokenStore
from trading.brokers.dhan import DhanBroker
from trading.brokers.dhan_stream import OrderStreamBridge, order_from_update
from trading.brokers.ratelimit import RateLimiter
from trading.models import Alert, Fill, Order, Position
from trading.orders.manager import OrderManager

pytestmark = pytest.mark.django_db(transaction=True)


async def until(condition, within: float = 15.0) -> bool:
    check = sync_to_async(condition)  # conditions may read the database
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return False


def db(fn, *args, **kwargs):
    return sync_to_async(fn)(*args, **kwargs)


@pytest.fixture
async def local(settings, tmp_path):
    dhan = await LocalDhan().start()
    for key, value in dhan.settings().items():
        setattr(settings, key, value)
    settings.DHAN_TOKEN_PATH = str(tmp_path / "token")
    settings.DHAN_STREAM_SILENCE_S = 2
    yield dhan
    await dhan.stop()


@pytest.fixture
async def live(local, clock, book):
    broker = DhanBroker(client=dhan_client(local.client_id, local.token), timeout_s=2.0, streams=True)
    oms = OrderManager(broker, RateLimiter(rate=1000), clock=clock, book=book, unknown_resolve_s=1.0)
    await broker.start(oms)
    assert await until(lambda: broker.push_healthy)
    yield broker, oms
    await broker.close()


async def buy(oms, option, price="100.00"):
    return await oms.submit(
        instrument=option,
        side=Order.Side.BUY,
        quantity=option.lot_size,
        limit_price=Decimal(price),
        check_slippage_rule=False,
    )


def fills(order_pk):
    return list(Fill.objects.filter(order_id=order_pk).values_list("broker_trade_id", "quantity"))


def position_of(option):
    row = Position.objects.filter(instrument=option).first()
    return row.net_quantity if row else 0


async def test_a_pushed_fill_books_the_position_without_polling(live, local, option):
    broker, oms = live
    order = await buy(oms, option)
    assert await until(lambda: broker.bridge.applied >= 2)
    assert await until(lambda: Order.objects.get(pk=order.pk).state == Order.State.FILLED)
    assert await db(lambda: position_of(option)) == option.lot_size
    assert await db(lambda: len(fills(order.pk))) == 1
    login = local.logins[0]["LoginReq"]
    assert login["MsgCode"] == 42 and login["ClientId"] == local.client_id and login["Token"] == local.token
    # The stream brought the fill: one read of this order's trades, no order book or trade book polling.
    assert ("GET", f"/v2/trades/{order.broker_order_id}") in local.calls
    assert ("GET", "/v2/orders") not in local.calls and ("GET", "/v2/trades/") not in local.calls


async def test_duplicates_and_late_updates_change_nothing(live, local, option):
    broker, oms = live
    order = await buy(oms, option)
    assert await until(lambda: Order.objects.get(pk=order.pk).state == Order.State.FILLED)
    remote = local.orders[order.broker_order_id]
    traded = local.update_of(remote)
    await local.push_order(traded)  # the same TRADED again
    await local.push_order(local.update_of(remote, traded_qty=0, status="Pending"))  # an old PENDING, late
    assert await until(lambda: broker.bridge.duplicates >= 1)
    await asyncio.sleep(0.2)
    fresh = await db(Order.objects.get, pk=order.pk)
    assert fresh.state == Order.State.FILLED and fresh.filled_quantity == option.lot_size
    assert await db(lambda: len(fills(order.pk))) == 1
    assert await db(lambda: position_of(option)) == option.lot_size


async def test_fills_out_of_order_are_each_counted_once(live, local, option):
    broker, oms = live
    local.fill = False
    order = await buy(oms, option)
    remote = local.orders[order.broker_order_id]
    half = option.lot_size // 2 or 1
    # Two trades at the exchange; the TRADED update arrives before the PART_TRADED one.
    for qty in (half, option.lot_size - half):
        local.trades.append(
            {
                "orderId": remote.order_id,
                "exchangeTradeId": f"T{qty}-{len(local.trades)}",
                "transactionType": "BUY",
                "exchangeSegment": "NSE_FNO",
                "securityId": remote.security_id,
                "tradedQuantity": qty,
                "tradedPrice": 100.0,
                "exchangeTime": remote.created,
            }
        )
    remote.filled, remote.average, remote.status = option.lot_size, 100.0, "TRADED"
    await local.push_order(local.update_of(remote))
    await local.push_order(local.update_of(remote, traded_qty=half, status="PART_TRADED"))
    assert await until(lambda: Order.objects.get(pk=order.pk).state == Order.State.FILLED)
    await asyncio.sleep(0.2)
    assert sorted(q for _, q in await db(fills, order.pk)) == sorted([half, option.lot_size - half])
    assert await db(lambda: position_of(option)) == option.lot_size


async def test_a_fill_the_trade_book_has_not_caught_up_with_stays_live_until_it_has(live, local, option):
    broker, oms = live
    local.fill = False
    broker.bridge.fill_retry_s = 0.05
    order = await buy(oms, option)
    remote = local.orders[order.broker_order_id]
    remote.filled, remote.average, remote.status = option.lot_size, 100.0, "TRADED"
    await local.push_order(local.update_of(remote))  # the update first; no trade listed yet
    assert await until(lambda: Order.objects.get(pk=order.pk).state == Order.State.PARTIAL)
    local.trades.append(
        {
            "orderId": remote.order_id,
            "exchangeTradeId": "LATE1",
            "transactionType": "BUY",
            "exchangeSegment": "NSE_FNO",
            "securityId": remote.security_id,
            "tradedQuantity": option.lot_size,
            "tradedPrice": 100.0,
            "exchangeTime": remote.created,
        }
    )
    assert await until(lambda: Order.objects.get(pk=order.pk).state == Order.State.FILLED, within=10)
    assert await db(fills, order.pk) == [("LATE1", option.lot_size)]


async def test_a_reject_keeps_the_reason(live, local, option):
    broker, oms = live
    local.kill_switch = True
    order = await buy(oms, option)
    fresh = await db(Order.objects.get, pk=order.pk)
    assert fresh.state == Order.State.REJECTED and fresh.reject_code == "DH-906"
    assert fresh.reason == "Kill switch is active"


async def test_a_drop_mid_burst_is_repaired_by_rest_sync_and_the_stream_comes_back(live, local, option):
    broker, oms = live
    local.fill = False
    orders = [await buy(oms, option) for _ in range(3)]
    for index, order in enumerate(orders):
        remote = local.orders[order.broker_order_id]
        local.trades.append(
            {
                "orderId": remote.order_id,
                "exchangeTradeId": f"B{index}",
                "transactionType": "BUY",
                "exchangeSegment": "NSE_FNO",
                "securityId": remote.security_id,
                "tradedQuantity": remote.quantity,
                "tradedPrice": 100.0,
                "exchangeTime": remote.created,
            }
        )
        remote.filled, remote.average, remote.status = remote.quantity, 100.0, "TRADED"
    await local.push_order(local.update_of(local.orders[orders[0].broker_order_id]))
    await local.drop_sockets()  # the rest of the burst is lost with the socket
    assert await until(lambda: Order.objects.get(pk=orders[0].pk).state == Order.State.FILLED)
    assert await until(lambda: broker.bridge.stream.connects >= 2)  # reconnected
    await oms.sync()  # the REST safety net finds the two fills the stream lost
    states = await db(lambda: [Order.objects.get(pk=o.pk).state for o in orders])
    assert states == [Order.State.FILLED] * 3
    assert await db(lambda: Fill.objects.filter(order__in=[o.pk for o in orders]).count()) == 3
    assert await db(lambda: position_of(option)) == 3 * option.lot_size


async def test_a_token_renewal_reconnects_with_the_new_token(live, local, settings):
    broker, oms = live
    stream = broker.bridge.stream
    # The client is connected once its login is sent; the server records a login when it reads it.
    assert await until(lambda: len(local.logins) == stream.connects)
    first = stream.connects
    new = local.renew()
    TokenStore().write(new)  # what refresh_dhan_token (or Celery beat) does
    assert await until(lambda: stream.connects > first and broker.push_healthy, within=15)
    assert stream.token == new
    assert await until(lambda: len(local.logins) >= stream.connects, within=5)
    assert {login["LoginReq"]["Token"] for login in local.logins[first:]} == {new}


async def test_a_refused_login_raises_one_alert_and_rest_keeps_the_books(local, clock, book):
    broker = DhanBroker(client=dhan_client(local.client_id, local.token), timeout_s=2.0, streams=True)
    oms = OrderManager(broker, RateLimiter(rate=1000), clock=clock, book=book)
    bridge = OrderStreamBridge(broker, oms)
    tokens = ["expired-token-value-000000"]
    bridge.stream = OrderUpdateStream(
        local.order_url,
        client_id=local.client_id,
        token_provider=lambda: tokens[0],
        silence_s=2,
        on_update=bridge.handle,
        on_state=bridge.on_state,
    )
    await bridge.start()
    assert await until(lambda: isinstance(bridge.stream.last_error, DhanAuthError))
    assert not bridge.healthy
    assert await until(lambda: Alert.objects.filter(title="Dhan order updates refused").count() == 1)
    tokens[0] = local.token  # renewed
    assert await until(lambda: bridge.healthy, within=15)
    await bridge.stop()
    await broker.close()


async def test_a_silent_socket_is_closed_without_blocking_and_replaced(local):
    local.silent = True
    stream = OrderUpdateStream(
        local.order_url,
        client_id=local.client_id,
        token_provider=lambda: local.token,
        silence_s=0.4,
        on_update=lambda data: None,
    )
    stream.start()
    assert await until(lambda: stream.connects >= 1)
    assert await until(lambda: stream.connects >= 2, within=10)  # the silent one was aborted and replaced
    # DhanHQ-py #139: dhanhq's close blocks forever on a dead socket; ours returns.
    await asyncio.wait_for(stream.stop(), 10)
    assert not stream.connected.is_set()


def test_an_order_update_maps_to_our_broker_order():
    data = {
        "Exchange": "NSE",
        "Segment": "D",
        "SecurityId": "52432",
        "OrderNo": "1124091136546",
        "TxnType": "S",
        "OrderType": "LMT",
        "Quantity": 75,
        "TradedQty": 25,
        "Price": 245.5,
        "AvgTradedPrice": 245.45,
        "Status": "Part_Traded",
        "CorrelationId": "QH0123",
        "ReasonDescription": "CONFIRMED",
        "LastUpdatedTime": "2026-12-01 10:30:46",
    }
    order = order_from_update(data)
    assert (order.broker_order_id, order.correlation_id, order.exchange_segment) == (
        "1124091136546",
        "QH0123",
        "NSE_FNO",
    )
    assert (str(order.side), str(order.status), order.filled_quantity) == ("SELL", "PART_TRADED", 25)
    assert order.average_price == Decimal("245.45") and order.reason == ""
    rejected = order_from_update({**data, "Status": "REJECTED", "ReasonDescription": "Insufficient funds"})
    assert (rejected.reject_code, rejected.reason) == ("REJECTED", "Insufficient funds")
