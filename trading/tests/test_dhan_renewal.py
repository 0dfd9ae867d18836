"""An expired token in the order path, on the real Dhan adapter with recorded
Dhan v2 replies (`responses`): the order call is answered with Dhan's
expired-token error, the engine raises a CRITICAL alert, renews the session
(RenewToken refused for an expired token, then PIN + TOTP), the order is
looked up by its correlation id — never resent blind — and the retried call
goes out with the new token, without a restart. Nothing captured holds a
secret."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pyotp
import pytest
import responses
from asgiref.sync import sync_to_async

from audit.models import AuditRecord
from marketdata.demo import ensure_demo_instruments
from marketdata.models import Instrument
from trading.brokers.dhan import DhanBroker
from trading.brokers.ratelimit import RateLimiter
from trading.conftest import DHAN_API, DHAN_AUTH, DHAN_CLIENT, DHAN_PIN, DHAN_TOTP_SECRET, use_dhan_credentials
from trading.models import Alert, Order
from trading.orders.manager import OrderManager

pytestmark = pytest.mark.django_db(transaction=True)
API, AUTH = DHAN_API, DHAN_AUTH
FIXTURES = Path(__file__).with_name("fixtures") / "dhan"
OLD = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzUxMiJ9.expired-token-value"
NEW = json.loads((FIXTURES / "totp_token.json").read_text())["accessToken"]
PIN, TOTP_SECRET, CLIENT = DHAN_PIN, DHAN_TOTP_SECRET, DHAN_CLIENT


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def captured(settings, json_log, tmp_path):
    use_dhan_credentials(settings, tmp_path, OLD)
    return json_log


def dhan_like(api):
    """Dhan's answers by the token a request carries: the old one is expired everywhere."""
    placed = {"n": 0}

    def token_of(request):
        return request.headers.get("access-token")

    def orders(request):
        if token_of(request) != NEW:
            return 401, {}, json.dumps(fixture("auth_failed.json"))
        placed["n"] += 1
        return 200, {}, json.dumps(fixture("order_placed.json"))

    def lookup(request):
        if token_of(request) != NEW:
            return 401, {}, json.dumps(fixture("auth_failed.json"))
        if not placed["n"]:  # the refused call left nothing at Dhan
            return 400, {}, json.dumps({"errorType": "Order_Error", "errorCode": "DH-906", "errorMessage": "No order"})
        return 200, {}, json.dumps({**fixture("order_traded.json"), "orderStatus": "PENDING", "filledQty": 0})

    api.add_callback(responses.POST, f"{API}/orders", callback=orders)
    api.add_callback(responses.GET, re.compile(rf"{API}/orders/external/\w+"), callback=lookup)
    # RenewToken only renews a token that is still valid: an expired one falls back to PIN + TOTP.
    api.get(f"{API}/RenewToken", json=fixture("auth_failed.json"), status=401)
    api.post(f"{AUTH}/app/generateAccessToken", json=fixture("totp_token.json"))
    return placed


async def test_an_expired_token_on_an_order_is_renewed_and_the_running_broker_retries_with_the_new_one(
    captured, capsys
):
    from dhanhq import DhanContext, dhanhq

    await sync_to_async(ensure_demo_instruments)()
    option = await Instrument.objects.filter(kind="CE", is_active=True).afirst()
    broker = DhanBroker(client=dhanhq(DhanContext(CLIENT, OLD)), timeout_s=2.0)
    oms = OrderManager(broker, RateLimiter(rate=100))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        placed = dhan_like(api)
        order = await oms.submit(
            instrument=option,
            side=Order.Side.BUY,
            quantity=option.lot_size,
            limit_price=Decimal("100.00"),
            check_slippage_rule=False,
        )
        await oms.wait_for_retries()
        calls = [
            (c.request.method, c.request.url.split("?")[0].removeprefix(API), c.request.headers.get("access-token"))
            for c in api.calls
        ]
    order = await Order.objects.aget(pk=order.pk)
    # What the trader sees: the order went through once, on the renewed session.
    assert order.state == Order.State.OPEN and order.broker_order_id == "112111182198"
    assert placed["n"] == 1
    first_post = calls.index(("POST", "/orders", OLD))
    assert calls[first_post + 1][1] in ("/RenewToken",)  # the renewal came before anything else
    assert any(path.endswith("/app/generateAccessToken") for _, path, _ in calls)  # then PIN + TOTP
    lookups = [i for i, (m, path, token) in enumerate(calls) if path.startswith("/orders/external/")]
    resend = calls.index(("POST", "/orders", NEW))
    assert lookups and lookups[0] < resend and calls[lookups[0]][2] == NEW  # looked up first, with the new token
    assert broker.token == NEW  # the running broker took it: no restart
    alert = await Alert.objects.aget(title="Broker token expired")
    assert alert.level == Alert.Level.CRITICAL
    assert not await Alert.objects.filter(title="Dhan token refresh failed").aexists()
    await broker.close()

    # No secret in anything captured: logs, stdout, stderr, alerts, the audit chain.
    out = capsys.readouterr()
    alerts = await sync_to_async(list)(Alert.objects.values_list("title", "message"))
    audit = await sync_to_async(list)(AuditRecord.objects.values_list("payload", flat=True))
    text = "\n".join([captured.getvalue(), out.out, out.err, json.dumps(alerts), json.dumps(audit, default=str)])
    assert "Broker token expired" in text
    for secret in (OLD, NEW, PIN, TOTP_SECRET, pyotp.TOTP(TOTP_SECRET).now()):
        assert secret not in text, f"a secret leaked: {secret[:4]}…"


async def test_a_renewal_that_fails_is_a_critical_alert_and_the_order_is_never_sent_blind(captured):
    from dhanhq import DhanContext, dhanhq

    await sync_to_async(ensure_demo_instruments)()
    option = await Instrument.objects.filter(kind="CE", is_active=True).afirst()
    broker = DhanBroker(client=dhanhq(DhanContext(CLIENT, OLD)), timeout_s=2.0)
    oms = OrderManager(broker, RateLimiter(rate=100))
    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        api.post(f"{API}/orders", json=fixture("auth_failed.json"), status=401)
        api.get(re.compile(rf"{API}/orders/external/\w+"), json=fixture("auth_failed.json"), status=401)
        api.get(f"{API}/RenewToken", json=fixture("auth_failed.json"), status=401)
        api.post(
            f"{AUTH}/app/generateAccessToken", json={"errorCode": "DH-901", "errorMessage": "Invalid TOTP"}, status=400
        )
        order = await oms.submit(
            instrument=option,
            side=Order.Side.BUY,
            quantity=option.lot_size,
            limit_price=Decimal("100.00"),
            check_slippage_rule=False,
        )
        await oms.wait_for_retries()
        posts = [c for c in api.calls if c.request.method == "POST" and c.request.url.endswith("/orders")]
    order = await Order.objects.aget(pk=order.pk)
    assert len(posts) == 1  # the lookup could not say: pending, looked up again later, never resent
    assert order.state == Order.State.UNKNOWN
    titles = set(await sync_to_async(list)(Alert.objects.filter(level="CRITICAL").values_list("title", flat=True)))
    assert {"Broker token expired", "Dhan token refresh failed"} <= titles
    assert broker.token == OLD
    await broker.close()


async def test_a_renewal_reaches_the_contained_tradehull_client_too(captured):
    from types import SimpleNamespace

    from dhanhq import DhanContext, dhanhq

    tradehull = SimpleNamespace(token_id=OLD, Dhan=dhanhq(DhanContext(CLIENT, OLD)))  # its fields, as constructed
    broker = DhanBroker(client=dhanhq(DhanContext(CLIENT, OLD)), timeout_s=2.0, tradehull=tradehull)
    with responses.RequestsMock() as api:
        api.get(f"{API}/RenewToken", json=fixture("renew_token.json"))  # still valid: renewed in place
        assert await broker.renew_session()
        api.get(f"{API}/fundlimit", json=fixture("fundlimit.json"))
        await broker.funds()
        assert api.calls[-1].request.headers["access-token"] == "renewed-token-value"
    assert broker.token == tradehull.token_id == tradehull.Dhan.dhan_http.access_token == "renewed-token-value"
    await broker.close()
