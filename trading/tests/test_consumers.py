from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from quanthub.asgi import application
from trading.consumers import DashboardConsumer
from trading.events import asend_now

pytestmark = pytest.mark.django_db(transaction=True)


def _communicator(user, origin: bytes = b"http://localhost"):
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), "/ws/dashboard/", headers=[(b"origin", origin)])
    communicator.scope["user"] = user
    return communicator


async def test_an_anonymous_websocket_is_refused():
    communicator = _communicator(AnonymousUser())
    connected, code = await communicator.connect()
    assert not connected and code == 4403


async def test_a_user_without_a_role_is_refused(make_user):
    user = await database_sync_to_async(make_user)("nobody")
    connected, code = await _communicator(user).connect()
    assert not connected and code == 4403


async def test_a_websocket_from_another_origin_is_refused(trader):
    # Through the real ASGI stack: AllowedHostsOriginValidator closes it before the consumer runs.
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=[(b"origin", b"http://evil.example")])
    connected, _ = await communicator.connect()
    assert not connected


async def test_an_anonymous_websocket_through_the_full_stack_is_refused():
    communicator = WebsocketCommunicator(application, "/ws/dashboard/", headers=[(b"origin", b"http://localhost")])
    connected, code = await communicator.connect()
    assert not connected and code == 4403


async def test_a_trader_gets_the_current_panels_then_every_push(trader, demo_market):
    communicator = _communicator(trader)
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_from(timeout=10)
    for panel in ("overview", "killall", "risk", "positions", "scorecards", "alerts", "chain-NIFTY"):
        assert f'id="panel-{panel}"' in first
    await asend_now("heartbeat", {"engine": "test"})
    pushed = await communicator.receive_from(timeout=10)
    assert 'id="panel-overview"' in pushed and 'id="panel-positions"' in pushed
    # An alert raised and committed elsewhere arrives as the re-rendered alerts panel.
    from trading.alerts import raise_alert

    await database_sync_to_async(raise_alert)("CRITICAL", "oms", "Order rejected: margin")
    pushed = await communicator.receive_from(timeout=10)
    assert 'id="panel-alerts"' in pushed and "Order rejected: margin" in pushed
    await communicator.disconnect()


async def test_kill_all_progress_reaches_the_page(trader):
    communicator = _communicator(trader)
    await communicator.connect()
    await communicator.receive_from(timeout=10)
    await asend_now(
        "kill_all",
        {
            "stage": "done",
            "legs": 3,
            "sent": 3,
            "filled": 3,
            "cancelled": 1,
            "flat": True,
            "flat_s": 1.2,
            "sent_s": 0.3,
            "kill_switch": True,
            "errors": [],
        },
    )
    pushed = await communicator.receive_from(timeout=10)
    assert 'data-testid="kill-summary"' in pushed and "Flat" in pushed and "flat after 1.2 s" in pushed
    await communicator.disconnect()


async def test_a_page_gets_only_the_panels_it_shows_on_connect(trader, demo_market):
    communicator = WebsocketCommunicator(
        DashboardConsumer.as_asgi(), "/ws/dashboard/?panels=risk,chain-BANKNIFTY,bogus"
    )
    communicator.scope["user"] = trader
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_from(timeout=10)
    assert 'id="panel-risk"' in first and 'id="panel-chain-BANKNIFTY"' in first
    assert 'id="panel-overview"' not in first and "bogus" not in first
    await communicator.disconnect()
