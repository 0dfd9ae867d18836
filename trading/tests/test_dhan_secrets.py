"""No secret reaches any output: every log line (through our JSON formatter, at
DEBUG), stdout, stderr and the exception text of a failing TOTP login, a
failing order and the streams' connect are captured, and none holds the
token, the PIN, the TOTP secret or code, or the client id with the token."""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal

import pyotp
import pytest
import requests
import responses

from quanthub.dhan.local import LocalDhan
from quanthub.dhan.streams import MarketFeedStream, OrderUpdateStream
from quanthub.dhan.tokens import TokenRefreshError, TokenStore, refresh
from trading.brokers.base import OrderType, PlaceRequest, Side
from trading.brokers.dhan import DhanBroker
from trading.conftest import DHAN_CLIENT, DHAN_PIN, DHAN_TOTP_SECRET, use_dhan_credentials

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzUxMiJ9.secret-token-value"
PIN, TOTP_SECRET, CLIENT = DHAN_PIN, DHAN_TOTP_SECRET, DHAN_CLIENT


@pytest.fixture
def output(settings, json_log, tmp_path):
    use_dhan_credentials(settings, tmp_path, TOKEN)
    raised: list[str] = []
    return json_log, raised


def assert_clean(output, capsys, *, extra: tuple[str, ...] = ()):
    stream, raised = output
    captured = capsys.readouterr()
    text = "\n".join([stream.getvalue(), captured.out, captured.err, *raised])
    assert text.strip(), "something was captured"
    code = pyotp.TOTP(TOTP_SECRET).now()
    for secret in (TOKEN, TOKEN[-20:], PIN, TOTP_SECRET, code, *extra):
        assert secret not in text, f"a secret leaked: {secret[:4]}…"
    assert json.dumps({"ClientId": CLIENT, "Token": TOKEN})[1:-1] not in text
    assert f"clientId={CLIENT}&" not in text  # the market feed's URL


def test_a_failing_totp_login_says_why_without_a_secret(output, capsys):
    store = TokenStore()
    with responses.RequestsMock() as api:
        api.get(
            "https://api.dhan.co/v2/RenewToken", json={"errorCode": "DH-901", "errorMessage": "expired"}, status=401
        )
        # requests puts the whole URL — PIN and TOTP in its query — into the exception message.
        api.post(
            "https://auth.dhan.co/app/generateAccessToken",
            body=requests.exceptions.ConnectionError(
                f"Max retries exceeded with url: /app/generateAccessToken?dhanClientId={CLIENT}&pin={PIN}"
                f"&totp={pyotp.TOTP(TOTP_SECRET).now()}"
            ),
        )
        with pytest.raises(TokenRefreshError) as excinfo:
            refresh(store)
    output[1].extend([str(excinfo.value), repr(excinfo.value)])
    logging.getLogger("quanthub.dhan.tokens").error("dhan token refresh failed", extra={"reason": str(excinfo.value)})
    assert "TOTP login failed: ConnectionError" in str(excinfo.value)
    assert "renewal failed: HTTP 401 DH-901" in str(excinfo.value)
    assert_clean(output, capsys)


def test_the_pin_is_masked_wherever_it_stands_alone(output, capsys):
    logging.getLogger("anything").warning("login failed for pin=%s", PIN)
    logging.getLogger("anything").warning("price 1482913.50 and id 4829130 are not the PIN")
    stream, _ = output
    first, second = stream.getvalue().splitlines()
    assert "pin=***" in first and PIN not in first
    assert "1482913.50" in second and "4829130" in second  # a PIN inside a longer number is not the PIN


async def test_a_failing_order_says_why_without_a_secret(output, capsys):
    from dhanhq import DhanContext, dhanhq

    broker = DhanBroker(client=dhanhq(DhanContext(CLIENT, TOKEN)), timeout_s=2.0)
    request = PlaceRequest("QHSECRET01", "132611240245000", "NSE_FNO", Side.BUY, 65, OrderType.LIMIT, Decimal("100"))
    with responses.RequestsMock() as api:
        api.post(
            "https://api.dhan.co/v2/orders",
            body=requests.exceptions.ConnectionError(f"reset; headers access-token: {TOKEN} client-id: {CLIENT}"),
        )
        with pytest.raises(Exception) as first:
            await broker.place_order(request)
        api.replace(
            responses.POST,
            "https://api.dhan.co/v2/orders",
            json={"errorType": "Invalid_Authentication", "errorCode": "DH-901", "errorMessage": "invalid"},
            status=401,
        )
        with pytest.raises(Exception) as second:
            await broker.place_order(request)
        assert api.calls[0].request.headers["access-token"] == TOKEN  # it was sent, only never shown
    output[1].extend([str(first.value), repr(first.value), str(second.value), repr(second.value)])
    assert type(first.value).__name__ == "Unknown" and type(second.value).__name__ == "AuthExpired"
    await broker.close()
    assert_clean(output, capsys)


async def test_the_streams_connect_and_are_refused_without_a_secret(output, capsys):
    local = await LocalDhan().start()
    try:
        wrong = "eyJ-expired-" + TOKEN  # refused by the server: every failure path runs
        streams = [
            OrderUpdateStream(
                local.order_url, client_id=CLIENT, token_provider=lambda: wrong, on_update=print, silence_s=1
            ),
            MarketFeedStream(
                local.feed_url,
                client_id=CLIENT,
                token_provider=lambda: wrong,
                on_packets=lambda parsed, at: None,
                silence_s=1,
            ),
            OrderUpdateStream(
                local.order_url,
                client_id=local.client_id,
                token_provider=lambda: local.token,
                on_update=print,
                silence_s=1,
            ),
        ]
        for stream in streams:
            stream.start()
        await asyncio.sleep(1.0)
        for stream in streams:
            output[1].append(repr(stream.last_error))
            await stream.stop()
        assert streams[2].connects >= 1 and local.logins  # the good one logged in
        assert any(type(s.last_error).__name__ == "DhanAuthError" for s in streams[:2])
    finally:
        await local.stop()
    assert_clean(output, capsys, extra=(wrong, local.token))
