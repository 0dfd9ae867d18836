"""Kill All and a manual exit pressed on the dashboard, through the real OMS and paper broker."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse

from risk.models import TradingState
from trading import views
from trading.conftest import open_legs as _open_legs
from trading.models import FlattenRequest, Order, Position

pytestmark = pytest.mark.django_db(transaction=True)


def _post(user, url):
    client = Client()
    client.force_login(user)
    return client.post(url, HTTP_HX_REQUEST="true")


async def test_kill_all_from_the_dashboard_flattens_the_book_and_halts(oms, book, demo_market, trader):
    await _open_legs(oms, book, 4)
    response = await sync_to_async(_post)(trader, reverse("trading:kill_all"))
    assert response.status_code == 200
    assert 'id="panel-killall"' in response.content.decode()
    await sync_to_async(views.wait_for_jobs, thread_sensitive=False)(90)
    assert not await Position.objects.exclude(net_quantity=0).aexists()
    assert await Order.objects.filter(purpose=Order.Purpose.KILL, state=Order.State.FILLED).acount() == 4
    assert (await TradingState.objects.aget(account="default")).state == TradingState.State.HALTED


async def test_a_second_press_while_kill_all_runs_starts_nothing(oms, book, demo_market, trader, monkeypatch):
    import threading

    release = threading.Event()
    calls = []

    def slow_kill_all(actor, reason, account):
        calls.append(actor)
        release.wait(10)

    monkeypatch.setattr("trading.views.request_kill_all", slow_kill_all)
    first = await sync_to_async(_post)(trader, reverse("trading:kill_all"))
    second = await sync_to_async(_post)(trader, reverse("trading:kill_all"))
    release.set()
    await sync_to_async(views.wait_for_jobs, thread_sensitive=False)(10)
    assert calls == ["user:trader1"]
    assert "already running" in second.content.decode() and "started" in first.content.decode()


async def test_a_manual_exit_flattens_one_position_and_leaves_the_others(
    oms, book, demo_market, trader, compliance_user
):
    await _open_legs(oms, book, 2)
    positions = [p async for p in Position.objects.exclude(net_quantity=0).order_by("pk")]
    target, other = positions
    refused = await sync_to_async(_post)(compliance_user, reverse("trading:exit_position", args=[target.pk]))
    assert refused.status_code == 403
    response = await sync_to_async(_post)(trader, reverse("trading:exit_position", args=[target.pk]))
    assert response.status_code == 200 and "Exit requested" in response.content.decode()
    await sync_to_async(views.wait_for_jobs, thread_sensitive=False)(90)
    assert (await Position.objects.aget(pk=target.pk)).net_quantity == 0
    assert (await Position.objects.aget(pk=other.pk)).net_quantity == other.net_quantity
    exits = [o async for o in Order.objects.filter(purpose=Order.Purpose.EXIT)]
    assert len(exits) == 1 and exits[0].state == Order.State.FILLED
    # Exiting does not halt trading.
    assert (await TradingState.objects.aget(account="default")).state != TradingState.State.HALTED
    again = await sync_to_async(_post)(trader, reverse("trading:exit_position", args=[target.pk]))
    assert "already flat" in again.content.decode()


async def test_an_exit_no_engine_takes_within_two_seconds_is_worked_standalone(oms, book, demo_market, trader):
    """A heartbeat says an engine trades the account, but it never takes the request
    (stuck): the exit does not wait on it for more than two seconds."""
    import time

    from django.utils import timezone

    from trading.models import EngineHeartbeat

    await _open_legs(oms, book, 1)
    position = await Position.objects.exclude(net_quantity=0).afirst()
    now = timezone.now()
    await EngineHeartbeat.objects.acreate(
        engine_id="engine-stuck", role=EngineHeartbeat.Role.ACTIVE, started_at=now, beat_at=now
    )
    began = time.monotonic()
    response = await sync_to_async(_post)(trader, reverse("trading:exit_position", args=[position.pk]))
    assert "Exit requested" in response.content.decode()
    again = await sync_to_async(_post)(trader, reverse("trading:exit_position", args=[position.pk]))
    assert "already being worked" in again.content.decode()
    await sync_to_async(views.wait_for_jobs, thread_sensitive=False)(90)
    request = await FlattenRequest.objects.aget(position=position)
    assert request.state == FlattenRequest.State.DONE and request.taken_by.startswith("standalone:")
    assert (request.taken_at is not None) and time.monotonic() - began >= 2.0
    assert request.result["flat"] is True and request.result["filled"] == 1
    assert (await Position.objects.aget(pk=position.pk)).net_quantity == 0
