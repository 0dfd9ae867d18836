from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from quanthub.asgi import application
from trading.consumers import DashboardConsumer
from trading.events import asend_now

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_render_cache():
    """The render cache is per process; a rendering from another test's database must not be reused."""
    from trading.consumers import CACHE

    CACHE.clear()
    yield
    CACHE.clear()


def _communicator(user, origin: bytes = b"http://localhost", path: str = "/ws/dashboard/"):
    communicator = WebsocketCommunicator(DashboardConsumer.as_asgi(), path, headers=[(b"origin", origin)])
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


async def test_a_trader_gets_the_current_panels_then_only_what_changed(trader, demo_market):
    communicator = _communicator(trader)
    connected, _ = await communicator.connect()
    assert connected
    first = await communicator.receive_from(timeout=10)
    for panel in ("killall", "risk", "positions", "scorecards", "alerts", "chain-NIFTY"):
        assert f'id="panel-{panel}"' in first
    # The overview comes in its parts, each swapped into the page's panel by its id.
    for part in ("overview-kpis", "overview-equity", "overview-equity-live"):
        assert f'id="{part}"' in first
    # A heartbeat on an unchanged book changes no panel's content: nothing is sent.
    await asend_now("heartbeat", {"engine": "test"})
    assert await communicator.receive_nothing(timeout=1)
    # An alert raised and committed elsewhere arrives as the re-rendered alerts panel
    # and the overview's figures (its open-alert count), and nothing else: not the
    # overview's equity curve, which the alert did not move.
    from trading.alerts import raise_alert

    await database_sync_to_async(raise_alert)("CRITICAL", "oms", "Order rejected: margin")
    pushed = await communicator.receive_from(timeout=10)
    assert 'id="panel-alerts"' in pushed and "Order rejected: margin" in pushed
    assert 'id="overview-kpis"' in pushed and 'id="panel-positions"' not in pushed
    assert 'id="overview-equity"' not in pushed and 'id="overview-equity-live"' not in pushed
    await communicator.disconnect()


async def test_a_book_change_reaches_the_page_on_the_next_heartbeat(trader, oms, book, demo_market):
    from trading.conftest import open_legs

    communicator = _communicator(trader, path="/ws/dashboard/?panels=positions,alerts")
    await communicator.connect()
    await communicator.receive_from(timeout=10)
    await open_legs(oms, book, 2)
    await asend_now("heartbeat", {"engine": "test"})
    pushed = await communicator.receive_from(timeout=10)
    assert 'id="panel-positions"' in pushed and "2 open" in pushed
    assert 'id="overview-kpis"' not in pushed and 'id="panel-alerts"' not in pushed
    await communicator.disconnect()


async def test_a_fact_is_rendered_once_for_every_page_watching(trader, demo_market):
    from trading.consumers import CACHE

    pages = [_communicator(trader, path="/ws/dashboard/?panels=overview,risk") for _ in range(5)]
    for page in pages:
        assert (await page.connect())[0]
        await page.receive_from(timeout=10)
    before = CACHE.renders
    from trading.alerts import raise_alert

    await database_sync_to_async(raise_alert)("WARNING", "feed", "Feed stale: NIFTY")
    for page in pages:
        pushed = await page.receive_from(timeout=10)
        assert 'id="overview-kpis"' in pushed and 'id="panel-risk"' not in pushed
    # The alert changes the overview and the alerts panel; no page shows alerts, but the
    # overview was rendered once for all five pages.
    assert CACHE.renders - before == 1
    for page in pages:
        await page.disconnect()


async def test_a_pushed_chain_reaches_only_the_pages_showing_that_underlying(trader, demo_market):
    from marketdata.feeds.base import ChainSnapshot
    from marketdata.feeds.simulator import SimulatorFeed
    from trading.events import chain_fact

    feed = SimulatorFeed(seed=7, underlyings=("NIFTY",))
    snapshot = next(item for item in feed.run_sync() if isinstance(item, ChainSnapshot))
    nifty = _communicator(trader, path="/ws/dashboard/?panels=chain-NIFTY")
    bank = _communicator(trader, path="/ws/dashboard/?panels=chain-BANKNIFTY")
    other_expiry = _communicator(trader, path="/ws/dashboard/?panels=chain-NIFTY@2099-01-01")
    for page in (nifty, bank, other_expiry):
        await page.connect()
        await page.receive_from(timeout=10)
    await asend_now("chain", chain_fact(snapshot))
    pushed = await nifty.receive_from(timeout=10)
    assert 'id="panel-chain-NIFTY"' in pushed and 'data-testid="atm"' in pushed and "PCR" in pushed
    assert await bank.receive_nothing(timeout=0.5)
    assert await other_expiry.receive_nothing(timeout=0.5)
    # The same chain again: same content, nothing sent.
    await asend_now("chain", chain_fact(snapshot))
    assert await nifty.receive_nothing(timeout=0.5)
    for page in (nifty, bank, other_expiry):
        await page.disconnect()


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
    assert 'id="overview-kpis"' not in first and "bogus" not in first
    await communicator.disconnect()


async def test_a_published_fact_is_small_and_costs_the_publisher_no_query(trader, demo_market):
    from unittest import mock

    from channels.layers import get_channel_layer

    from trading.events import group_name

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group_name(), channel)
    refuse = mock.Mock(side_effect=AssertionError("the publisher must not read or render"))
    with (
        mock.patch("trading.dashboard.render_panel", refuse),
        mock.patch("django.db.models.query.QuerySet._fetch_all", refuse),
    ):
        assert await asend_now("heartbeat", {"engine": "e1", "at": "2026-12-01T10:00:00+05:30"})
    message = await layer.receive(channel)
    assert not refuse.called
    assert message["type"] == "dashboard.fact" and message["kind"] == "heartbeat" and "html" not in message
    assert message["data"] == {"engine": "e1", "at": "2026-12-01T10:00:00+05:30"} and message["v"]
    # A kind no page shows is not sent at all.
    assert not await asend_now("fill", {"id": 1})
    await layer.group_discard(group_name(), channel)


async def test_pushed_panels_carry_only_the_controls_the_viewer_may_use(trader, compliance_user, demo_market):
    from trading.alerts import raise_alert

    desk = _communicator(trader, path="/ws/dashboard/?panels=killall,alerts")
    audit = _communicator(compliance_user, path="/ws/dashboard/?panels=killall,alerts")
    for page in (desk, audit):
        await page.connect()
    assert 'id="kill-all-button"' in await desk.receive_from(timeout=10)
    assert 'id="kill-all-button"' not in await audit.receive_from(timeout=10)
    await database_sync_to_async(raise_alert)("CRITICAL", "oms", "Order rejected: margin")
    assert "Acknowledge</button>" in await desk.receive_from(timeout=10)
    pushed = await audit.receive_from(timeout=10)
    assert "Order rejected: margin" in pushed and "Acknowledge</button>" not in pushed
    for page in (desk, audit):
        await page.disconnect()


async def _members(layer, group: str) -> int:
    """How many channels of this process the layer has in ``group``: the in-memory
    layer's dict, or channels-redis's sorted set of the group, counting only this
    process's channels (on a shared Redis other processes have theirs in it)."""
    if hasattr(layer, "groups"):
        return len(layer.groups.get(group, {}))
    connection = layer.connection(layer.consistent_hash(group))
    names = await connection.zrange(layer._group_key(group), 0, -1)
    return sum(1 for n in names if layer.client_prefix in (n.decode() if isinstance(n, bytes) else n))


async def test_a_fact_crosses_the_channel_layer_once_for_all_pages_of_a_process(trader, demo_market):
    from channels.layers import get_channel_layer

    from trading.events import group_name

    layer = get_channel_layer()
    before = await _members(layer, group_name("default"))  # an earlier test's page may still be leaving
    pages = [_communicator(trader, path="/ws/dashboard/?panels=overview") for _ in range(3)]
    for page in pages:
        assert (await page.connect())[0]
        await page.receive_from(timeout=10)
    assert await _members(layer, group_name("default")) == before + 1  # the process, not three pages
    from trading.alerts import raise_alert

    await database_sync_to_async(raise_alert)("WARNING", "feed", "Feed stale: NIFTY")
    for page in pages:
        assert 'id="overview-kpis"' in await page.receive_from(timeout=10)
    await pages[0].disconnect()
    await database_sync_to_async(raise_alert)("WARNING", "feed", "Feed stale: BANKNIFTY")
    for page in pages[1:]:
        assert 'id="overview-kpis"' in await page.receive_from(timeout=10)  # two open alerts now
        await page.disconnect()
    assert await _members(layer, group_name("default")) == before  # the last page out takes the process out


async def test_a_burst_of_facts_of_one_panel_is_delivered_once_with_the_latest_state(trader, oms, book, demo_market):
    """While a heartbeat's panels render, two more heartbeats arrive: the middle one
    is overtaken before its turn and neither rendered nor sent, and the last finds
    the page already showing the book as it is."""
    import threading
    from unittest import mock

    from trading import dashboard
    from trading.conftest import open_legs
    from trading.consumers import CACHE, FANOUT
    from trading.events import group_name

    page = _communicator(trader, path="/ws/dashboard/?panels=positions")
    await page.connect()
    await page.receive_from(timeout=10)
    await open_legs(oms, book, 1)
    release, rendering = threading.Event(), threading.Event()
    real = dashboard.render_parts

    def held(*args, **kwargs):
        rendering.set()
        release.wait(10)
        return real(*args, **kwargs)

    before = CACHE.renders
    with mock.patch.object(dashboard, "render_parts", held):
        await asend_now("heartbeat", {"engine": "test"})
        assert await database_sync_to_async(rendering.wait, thread_sensitive=False)(10)
        # The publisher touches no database: these go out while the first renders.
        await asend_now("heartbeat", {"engine": "test"})
        await asend_now("heartbeat", {"engine": "test"})
        # Released once the process has all three: the first rendering, two waiting their turn.
        members = FANOUT._groups[group_name()]
        for _ in range(100):
            if len(members.deliveries) == 3:
                break
            await asyncio.sleep(0.02)
        release.set()
        pushed = await page.receive_from(timeout=10)
        assert 'id="panel-positions"' in pushed and "1 open" in pushed
        assert await page.receive_nothing(timeout=1)
    assert CACHE.renders - before == 2  # the first heartbeat and the last, not the one between
    await page.disconnect()


async def test_the_publisher_does_not_wait_for_the_channel_layer(trader, demo_market):
    """The engine's await is a queue append: a channel layer that takes its time
    holds back the dashboards, in the order the facts were published, not the tick."""
    from unittest import mock

    from channels.layers import get_channel_layer

    from trading import events
    from trading.events import group_name

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group_name(), channel)
    real = layer.group_send

    async def slow(group, message):
        await asyncio.sleep(0.2)
        await real(group, message)

    errors = ["first"]
    with mock.patch.object(layer, "group_send", slow):
        began = time.monotonic()
        assert await asend_now("kill_all", {"stage": "sending", "errors": errors})
        errors.append("second")  # the caller's own list moves on; the queued fact does not
        assert await asend_now("kill_all", {"stage": "done", "errors": errors})
        assert time.monotonic() - began < 0.1
        first, second = await layer.receive(channel), await layer.receive(channel)
    assert (first["data"]["stage"], first["data"]["errors"]) == ("sending", ["first"])
    assert (second["data"]["stage"], second["data"]["errors"]) == ("done", ["first", "second"])
    await events.flush()
    await layer.group_discard(group_name(), channel)


async def test_a_dead_channel_layer_is_counted_not_raised(trader, demo_market):
    from unittest import mock

    from channels.layers import get_channel_layer

    from trading import events
    from trading.events import group_name

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add(group_name(), channel)
    before = dict(events.stats)
    with mock.patch.object(layer, "group_send", mock.AsyncMock(side_effect=ConnectionError("Redis down"))):
        assert await asend_now("heartbeat", {"engine": "e1"})
        await events.flush()
    assert events.stats["failed"] == before["failed"] + 1 and events.stats["published"] == before["published"]
    await layer.group_discard(group_name(), channel)


async def test_the_traders_page_says_the_engine_stopped_when_it_stops(trader, enabled):
    import datetime as dt

    from trading.conftest import sim_engine

    engine, _ = await database_sync_to_async(sim_engine)(dt.time(9, 15), dt.time(9, 15, 20))
    page = _communicator(trader, path="/ws/dashboard/?panels=overview")
    connected, _ = await page.connect()
    assert connected
    await page.receive_from(timeout=10)
    await engine.run()
    shown = ""
    deadline = time.monotonic() + 10
    while 'data-testid="engine">stopped<' not in shown and time.monotonic() < deadline:
        try:
            shown = await page.receive_from(timeout=1)
        except TimeoutError:
            continue
    await page.disconnect()
    assert 'data-testid="engine">stopped<' in shown
