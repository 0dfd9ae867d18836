"""The ways a person asks to get out, driven where they press: the REST API and the admin."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from audit.models import AuditRecord
from quanthub.clock import IST
from risk.breakers import trip
from risk.models import BreakerTrip, TradingState
from trading.conftest import open_legs
from trading.models import FlattenRequest, PaperPosition

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_api_kill_all_returns_the_result_from_the_actual_states(oms, book, demo_market, trader):
    await open_legs(oms, book, 3, futures=True)
    client = APIClient()
    client.force_authenticate(trader)
    response = await sync_to_async(client.post, thread_sensitive=False)(
        "/api/v1/risk/kill-all/", {"reason": "drill", "timeout_s": 15}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["flat"] is True and body["legs"] == 3 and body["filled"] == 3 and body["still_open"] == []
    assert body["worked_by"].startswith("standalone:") and body["kill_switch"] is True
    assert {leg["open"] for leg in body["detail"]} == {0}
    assert not await PaperPosition.objects.exclude(net_quantity=0).aexists()
    request = await FlattenRequest.objects.aget(pk=body["request"])
    assert request.state == FlattenRequest.State.DONE and request.result["flat"] is True
    record = await AuditRecord.objects.filter(action="kill_all.finished").alatest("seq")
    assert record.actor == "user:trader1" and record.payload["legs"] == 3


def test_clearing_a_breaker_in_the_admin_records_who_and_when_itself(risk_manager, demo_market):
    at = dt.datetime(2026, 11, 24, 10, 0, tzinfo=IST)
    item = trip("vix", "India VIX jumped", at=at)
    assert TradingState.objects.get(account="default").state == TradingState.State.REDUCING
    client = Client()
    client.force_login(risk_manager)
    page = client.get(reverse("admin:risk_breakertrip_change", args=[item.pk]))
    assert page.status_code == 200 and 'name="cleared_by"' not in page.content.decode()  # nothing to type
    response = client.post(
        reverse("admin:risk_breakertrip_changelist"),
        {"action": "clear_trips", "_selected_action": [item.pk]},
        follow=True,
    )
    assert response.status_code == 200
    item.refresh_from_db()
    assert item.cleared_by == "user:risk1" and item.cleared_at is not None
    record = AuditRecord.objects.filter(action="breaker.cleared").latest("seq")
    assert record.actor == "user:risk1" and record.payload == {"breaker": "vix"}
    assert TradingState.objects.get(account="default").state == TradingState.State.ACTIVE
    assert BreakerTrip.objects.filter(cleared_at__isnull=True).count() == 0
