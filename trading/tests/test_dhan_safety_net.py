"""The broker-side safety net: the P&L exit set at the daily loss cap plus the
buffer, read back, audited and shown on the risk panel; a mismatch alerts;
Kill All reads the kill switch before and after; an entry whose basket the
margin calculator cannot price is refused, an exit never asks."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import responses

from audit.models import AuditRecord
from risk.models import RiskLimits
from trading.brokers.dhan import DhanBroker
from trading.brokers.safety import apply_pnl_exit, basket_margin_per_lot, kill_switch_check
from trading.models import Alert

API = "https://api.dhan.co/v2"
FIXTURES = Path(__file__).with_name("fixtures") / "dhan"
pytestmark = pytest.mark.django_db(transaction=True)


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def dhan():
    from dhanhq import DhanContext, dhanhq

    broker = DhanBroker(client=dhanhq(DhanContext("1000000001", "safety-net-token-value")), timeout_s=2.0)
    yield broker
    broker._pool.shutdown(wait=False)


@pytest.fixture
def api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


async def limits(cap="25000"):
    from asgiref.sync import sync_to_async

    def make():
        row = RiskLimits.active()
        row.daily_loss_cap = Decimal(cap)
        row.save()
        return row

    return await sync_to_async(make)()


async def test_the_pnl_exit_is_the_loss_cap_plus_the_buffer_read_back_and_audited(dhan, api, settings, clock):
    settings.DHAN_PNL_EXIT_BUFFER = Decimal("2000")
    api.post(f"{API}/pnlExit", json=fixture("pnl_exit_set.json"))
    api.get(f"{API}/pnlExit", json=fixture("pnl_exit.json"))  # loss 27000, kill switch on
    state = await apply_pnl_exit(dhan, await limits("25000"), account="default", at=clock.now())
    assert state["ok"] and state["wanted"] == "27000.00" and state["loss"] == "27000.00"
    assert json.loads(api.calls[0].request.body)["lossValue"] == 27000.0
    record = await AuditRecord.objects.filter(action="broker.pnl_exit").alast()
    assert record.payload["ok"] is True
    assert not await Alert.objects.filter(source="broker").aexists()


async def test_a_read_back_that_differs_is_an_alert(dhan, api, settings, clock):
    settings.DHAN_PNL_EXIT_BUFFER = Decimal("2000")
    api.post(f"{API}/pnlExit", json=fixture("pnl_exit_set.json"))
    api.get(f"{API}/pnlExit", json={**fixture("pnl_exit.json"), "loss": "50000.00"})
    state = await apply_pnl_exit(dhan, await limits("30000"), account="default", at=clock.now())
    assert not state["ok"] and state["wanted"] == "32000.00" and state["loss"] == "50000.00"
    alert = await Alert.objects.aget(title="Broker P&L exit mismatch")
    assert alert.level == Alert.Level.CRITICAL and "32000" in alert.message


async def test_a_pnl_exit_that_cannot_be_set_is_an_alert(dhan, api, clock):
    api.post(f"{API}/pnlExit", body=requests.exceptions.ConnectionError("reset"))
    state = await apply_pnl_exit(dhan, await limits(), account="default", at=clock.now())
    assert not state["ok"] and state["error"]
    assert await Alert.objects.filter(title="Broker P&L exit not set").aexists()


async def test_the_paper_broker_has_no_pnl_exit(paper, clock):
    assert await apply_pnl_exit(paper, await limits(), account="default", at=clock.now()) is None


async def test_the_risk_panel_shows_the_pnl_exit(dhan, api, clock, client, trader):
    from asgiref.sync import sync_to_async

    from trading.models import EngineHeartbeat

    api.post(f"{API}/pnlExit", json=fixture("pnl_exit_set.json"))
    api.get(f"{API}/pnlExit", json=fixture("pnl_exit.json"))
    state = await apply_pnl_exit(dhan, await limits("25000"), account="default", at=clock.now())

    def render():
        now = clock.now()
        EngineHeartbeat.objects.create(
            engine_id="e1",
            account="default",
            hostname="h",
            pid=1,
            role="ACTIVE",
            broker="dhan",
            feed="dhan",
            started_at=now,
            beat_at=now,
            stats={"pnl_exit": state},
        )
        client.force_login(trader)
        return client.get("/trading/panels/risk/").content.decode()

    html = await sync_to_async(render)()
    assert 'data-testid="pnl-exit"' in html and "set at ₹27,000.00 with the kill switch" in html


async def test_kill_all_reads_the_kill_switch_and_a_surprise_is_an_alert(dhan, api):
    api.get(f"{API}/killswitch", json={"dhanClientId": "1000000001", "killSwitchStatus": "ACTIVATE"})
    assert await kill_switch_check(dhan, expect=False, stage="before Kill All", account="default") is True
    alert = await Alert.objects.aget(title="Kill switch mismatch")
    assert "before Kill All" in alert.message and alert.level == Alert.Level.CRITICAL
    api.replace(responses.GET, f"{API}/killswitch", json=fixture("killswitch_status.json"))
    assert await kill_switch_check(dhan, expect=False, stage="before Kill All", account="default") is False
    assert await Alert.objects.filter(title="Kill switch mismatch").acount() == 1


async def test_an_entry_basket_the_calculator_cannot_price_is_refused_and_an_exit_never_asks(dhan, api, option):
    from trading.strategies.base import OrderIntent

    instruments = {option.security_id: option}
    entry = OrderIntent("s", option.security_id, "BUY", 2, option.lot_size, "ENTRY", Decimal("100.00"), "sig")
    exit_ = OrderIntent(
        "s", option.security_id, "SELL", 2, option.lot_size, "EXIT", Decimal("100.00"), "sig", reduces_exposure=True
    )
    api.post(f"{API}/margincalculator", body=requests.exceptions.ReadTimeout("timed out"))
    refused = await basket_margin_per_lot(dhan, [entry], instruments)
    assert refused.per_lot is None and "Unavailable" in refused.error
    assert await basket_margin_per_lot(dhan, [exit_], instruments) is None  # no call for an exit
    api.replace(responses.POST, f"{API}/margincalculator", json=fixture("margin_single.json"))
    priced = await basket_margin_per_lot(dhan, [entry], instruments)
    assert priced.error is None and priced.per_lot == (Decimal("7832.25") / 2).quantize(Decimal("0.01"))
    assert sum(1 for c in api.calls if c.request.url.endswith("/margincalculator")) == 2
