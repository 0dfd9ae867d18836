"""The Dhan adapter, driven through the real dhanhq (and Dhan-Tradehull) code
with `responses` serving Dhan API v2 JSON. No test reaches the network: an
unmatched URL fails inside `responses`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import responses

from trading.brokers.base import (
    AuthExpired,
    BrokerStatus,
    OrderType,
    PlaceRequest,
    Rejected,
    Side,
    Throttled,
    Unavailable,
    Unknown,
)
from trading.brokers.dhan import DhanBroker, contained_tradehull

API = "https://api.dhan.co/v2"
FIXTURES = Path(__file__).with_name("fixtures") / "dhan"


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def client():
    from dhanhq import DhanContext, dhanhq

    return dhanhq(DhanContext("1000000001", "test-access-token"))


@pytest.fixture
def dhan(client):
    broker = DhanBroker(client=client, timeout_s=3.0)
    yield broker
    broker._pool.shutdown(wait=False)


@pytest.fixture
def api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def request(cid="QHTEST0001"):
    return PlaceRequest(cid, "132611240245000", "NSE_FNO", Side.BUY, 65, OrderType.LIMIT, Decimal("100.00"))


def test_the_sdk_timeout_is_lowered_from_60_seconds(dhan, client):
    assert client.dhan_http.timeout == 3.0


async def test_a_placed_order_carries_our_client_order_id_as_correlation_id(dhan, api):
    api.post(f"{API}/orders", json=fixture("order_placed.json"))
    ack = await dhan.place_order(request())
    assert ack.broker_order_id == "112111182198" and ack.status == BrokerStatus.TRANSIT
    body = json.loads(api.calls[0].request.body)
    assert body["correlationId"] == "QHTEST0001" and body["price"] == 100.0 and body["productType"] == "INTRADAY"
    assert api.calls[0].request.headers["access-token"] == "test-access-token"


@pytest.mark.parametrize(
    ("status", "fixture_name", "error", "code"),
    [
        (400, "reject_insufficient_funds.json", Rejected, "DH-906"),
        (429, "rate_limited.json", Throttled, None),
        (401, "auth_failed.json", AuthExpired, None),
        (500, "internal_error.json", Unknown, None),
    ],
)
async def test_dhan_error_codes_map_to_our_error_classes(dhan, api, status, fixture_name, error, code):
    api.post(f"{API}/orders", json=fixture(fixture_name), status=status)
    with pytest.raises(error) as excinfo:
        await dhan.place_order(request())
    if code:
        assert excinfo.value.code == code and excinfo.value.message == "Insufficient Funds"


@pytest.mark.parametrize(
    "body",
    [
        requests.exceptions.ReadTimeout("read timed out"),
        requests.exceptions.ConnectTimeout("connect timed out"),
        requests.exceptions.ConnectionError("Connection reset by peer"),
    ],
)
async def test_timeouts_and_resets_make_an_order_unknown_and_a_read_unavailable(dhan, api, body):
    api.post(f"{API}/orders", body=body)
    api.get(f"{API}/orders", body=body)
    with pytest.raises(Unknown):
        await dhan.place_order(request())
    with pytest.raises(Unavailable):
        await dhan.order_book()


async def test_an_unparsable_reply_is_unknown(dhan, api):
    api.post(f"{API}/orders", body="<html><body>502 Bad Gateway</body></html>", status=502)
    with pytest.raises(Unknown):
        await dhan.place_order(request())


async def test_a_call_that_hangs_is_cut_off_by_our_own_timeout(client, api):
    broker = DhanBroker(client=client, timeout_s=0.1)

    def slow(req):
        time.sleep(1.5)
        return 200, {}, json.dumps(fixture("order_placed.json"))

    api.add_callback(responses.POST, f"{API}/orders", callback=slow)
    began = time.monotonic()
    with pytest.raises(Unknown, match="timed out"):
        await broker.place_order(request())
    assert time.monotonic() - began < 1.4
    broker._pool.shutdown(wait=False)


async def test_lookup_by_correlation_id(dhan, api):
    api.get(f"{API}/orders/external/QHTEST0001", json=fixture("order_traded.json"))
    api.get(
        f"{API}/orders/external/QHNOPE",
        json={"errorType": "Order_Error", "errorCode": "DH-906", "errorMessage": "No order found"},
        status=400,
    )
    found = await dhan.get_order_by_correlation("QHTEST0001")
    assert found.status == BrokerStatus.TRADED and found.filled_quantity == 65
    assert found.average_price == Decimal("99.95")
    assert await dhan.get_order_by_correlation("QHNOPE") is None


async def test_trades_are_joined_to_orders_for_their_correlation_id(dhan, api):
    api.get(f"{API}/orders", json=[fixture("order_traded.json")])
    api.get(f"{API}/trades/", json=fixture("trades.json"))
    [trade] = await dhan.trade_book()
    assert (trade.correlation_id, trade.quantity, trade.price, trade.trade_id) == (
        "QHTEST0001",
        65,
        Decimal("99.95"),
        "55555",
    )


async def test_positions_funds_and_the_kill_switch(dhan, api):
    api.get(f"{API}/positions", json=fixture("positions.json"))
    api.get(f"{API}/fundlimit", json=fixture("fundlimit.json"))
    api.post(f"{API}/killswitch?killSwitchStatus=ACTIVATE", json=fixture("killswitch.json"))
    [position] = await dhan.positions()  # the closed one (netQty 0) is not a position
    assert (position.security_id, position.net_quantity) == ("132611240245000", 65)
    funds = await dhan.funds()
    assert (funds.available, funds.utilised) == (Decimal("98440.00"), Decimal("15202.00"))
    assert await dhan.kill_switch(True) is True


async def test_a_missing_position_report_is_unavailable_not_flat(dhan, api):
    api.get(f"{API}/positions", body=requests.exceptions.ReadTimeout("timed out"))
    with pytest.raises(Unavailable):
        await dhan.positions()


@pytest.mark.django_db(transaction=True)
async def test_the_oms_resolves_an_unknown_dhan_order_by_lookup_and_never_resends(dhan, api, option, clock):
    from marketdata.book import QuoteBook
    from trading.brokers.ratelimit import RateLimiter
    from trading.models import Order
    from trading.orders.manager import OrderManager

    oms = OrderManager(
        dhan,
        RateLimiter(rate=1000),
        clock=clock,
        book=QuoteBook(),
        unknown_resolve_s=1.0,
        id_factory=lambda: "QHTEST0001",
    )
    api.post(f"{API}/orders", body=requests.exceptions.ConnectionError("Connection reset by peer"))
    api.get(f"{API}/orders/external/QHTEST0001", json=fixture("order_traded.json"))
    api.get(f"{API}/orders", json=[fixture("order_traded.json")])
    api.get(f"{API}/trades/", json=fixture("trades.json"))
    order = await oms.submit(
        instrument=option,
        side=Order.Side.BUY,
        quantity=option.lot_size,
        limit_price=Decimal("100.00"),
        check_slippage_rule=False,
    )
    assert order.state == Order.State.FILLED and order.broker_order_id == "112111182198"
    assert order.filled_quantity == 65 and order.unknown_at is not None
    assert sum(1 for call in api.calls if call.request.method == "POST") == 1


def test_importing_the_adapter_does_not_import_dhan_tradehull():
    code = (
        "import os, sys, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'quanthub.settings'); "
        "django.setup(); import trading.brokers.dhan; print('Dhan_Tradehull' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "LOG_LEVEL": "error"},
    )
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_tradehull_is_constructed_contained(tmp_path, api, capsys, monkeypatch):
    """Its constructor logs in, wants the scrip master in ./Dependencies, calls
    logging.basicConfig and prints: none of that may leak into our process."""
    import datetime as dt
    import logging

    from marketdata import synthetic

    api.get(f"{API}/profile", json=fixture("profile.json"))
    data_dir = tmp_path / "dhan"
    dependencies = data_dir / "Dependencies"
    dependencies.mkdir(parents=True)
    today = time.strftime("%Y-%m-%d")
    master = dependencies / f"all_instrument {today}.csv"
    synthetic.write_master(master, dt.date.today())  # noqa: DTZ011 (the library names files by local date)
    # It reads "Dependencies\\<file>" (a Windows path): on Linux that is a file name in its working directory.
    (data_dir / f"Dependencies\\all_instrument {today}.csv").write_bytes(master.read_bytes())
    root = logging.getLogger()
    handlers, level, cwd = list(root.handlers), root.level, os.getcwd()

    tradehull = contained_tradehull("1000000001", "test-access-token", data_dir)

    assert tradehull.Dhan is not None
    assert capsys.readouterr().out == ""  # its prints went to our log
    assert root.handlers == handlers and root.level == level and os.getcwd() == cwd
    assert not Path(cwd, "Dependencies").exists()
    assert any(call.request.url == f"{API}/profile" for call in api.calls)
    broker = DhanBroker(client=tradehull.Dhan, timeout_s=2.0)
    assert tradehull.Dhan.dhan_http.timeout == 2.0
    broker._pool.shutdown(wait=False)


async def test_a_plain_http_429_is_throttled_with_its_retry_after(dhan, api):
    api.post(f"{API}/orders", body="Too Many Requests", status=429, headers={"Retry-After": "7"})
    with pytest.raises(Throttled) as excinfo:
        await dhan.place_order(request())
    assert excinfo.value.retry_after == 7.0


async def test_dh904_without_retry_after_is_throttled_for_a_second(dhan, api):
    api.post(f"{API}/orders", json=fixture("rate_limited.json"), status=429)
    with pytest.raises(Throttled) as excinfo:
        await dhan.place_order(request())
    assert excinfo.value.retry_after == 1.0 and excinfo.value.code == "DH-904"


async def test_a_200_that_says_rejected_keeps_dhans_code_and_message(dhan, api):
    api.post(f"{API}/orders", json={"orderId": "112111182199", "orderStatus": "REJECTED"})
    api.get(f"{API}/orders/112111182199", json=fixture("order_rejected.json"))
    ack = await dhan.place_order(request())
    assert ack.status == BrokerStatus.REJECTED and ack.reject_code == "RMS-EM-1035"
    assert ack.reason.startswith("RMS:Margin Exceeds")


@pytest.mark.parametrize("status", [200, 401])
async def test_an_expired_token_envelope_is_auth_expired_on_the_order_path(dhan, api, status):
    api.post(f"{API}/orders", json={"data": {"807": "Access token is expired"}, "status": "failed"}, status=status)
    with pytest.raises(AuthExpired, match="807"):
        await dhan.place_order(request())


async def test_the_margin_calculator_prices_the_whole_basket_and_caches_it(dhan, api):
    from trading.brokers.base import MarginLeg

    api.post(f"{API}/margincalculator/multi", json=fixture("margin_multi.json"))
    legs = [
        MarginLeg("132611240245000", "NSE_FNO", Side.SELL, 65, Decimal("100.00")),
        MarginLeg("132611240246000", "NSE_FNO", Side.BUY, 65, Decimal("20.00")),
    ]
    margin = await dhan.basket_margin(legs)
    again = await dhan.basket_margin(list(reversed(legs)))  # the same basket, from the cache
    assert margin == again and margin.total == Decimal("118422.50") and margin.hedge_benefit == Decimal("61840.00")
    assert len(api.calls) == 1
    body = json.loads(api.calls[0].request.body)
    assert [s["transactionType"] for s in body["scripList"]] == ["SELL", "BUY"] and body["includePosition"] is False


async def test_one_leg_uses_the_single_calculator_and_a_silent_calculator_is_unavailable(dhan, api):
    from trading.brokers.base import MarginLeg

    api.post(f"{API}/margincalculator", json=fixture("margin_single.json"))
    leg = MarginLeg("132611240245000", "NSE_FNO", Side.BUY, 65, Decimal("120.50"))
    assert (await dhan.basket_margin([leg])).total == Decimal("7832.25")
    api.replace(responses.POST, f"{API}/margincalculator", body=requests.exceptions.ReadTimeout("timed out"))
    dhan.margin_cache_s = 0
    with pytest.raises(Unavailable):
        await dhan.basket_margin([leg])


async def test_the_pnl_exit_is_set_read_back_and_stopped(dhan, api):
    api.post(f"{API}/pnlExit", json=fixture("pnl_exit_set.json"))
    api.get(f"{API}/pnlExit", json=fixture("pnl_exit.json"))
    api.delete(f"{API}/pnlExit", json=fixture("pnl_exit_stopped.json"))
    state = await dhan.set_pnl_exit(loss=Decimal("27000"))
    body = json.loads(api.calls[0].request.body)
    assert body["lossValue"] == 27000.0 and body["enableKillSwitch"] is True and body["productType"] == ["INTRADAY"]
    # Read back in GET /pnlExit's documented names: profit, loss, segments, enable_kill_switch.
    assert state.active and state.loss == Decimal("27000.00") and state.kill_switch
    assert state.profit == Decimal("1200000.00") and state.products == ("INTRADAY",)
    await dhan.stop_pnl_exit()
    assert api.calls[-1].request.method == "DELETE"


def test_a_pnl_exit_read_in_the_request_names_or_with_a_signed_loss_means_the_same():
    from trading.brokers.dhan import parse_pnl_exit

    documented = parse_pnl_exit(fixture("pnl_exit.json"))
    echoed = parse_pnl_exit(
        {
            "pnlExitStatus": "ACTIVE",
            "profitValue": 1200000.0,
            "lossValue": -27000.0,
            "productType": ["INTRADAY"],
            "enableKillSwitch": True,
        }
    )
    assert documented == echoed
    assert not parse_pnl_exit({**fixture("pnl_exit.json"), "enable_kill_switch": False}).kill_switch
    assert not parse_pnl_exit(fixture("pnl_exit_stopped.json")).active


async def test_the_kill_switch_status_is_read(dhan, api):
    api.get(f"{API}/killswitch", json=fixture("killswitch_status.json"))
    assert await dhan.kill_switch_status() is False
    api.replace(responses.GET, f"{API}/killswitch", json={"dhanClientId": "1000000001", "killSwitchStatus": "ACTIVATE"})
    assert await dhan.kill_switch_status() is True


def test_the_http_session_reads_the_environment_once_per_host_and_answers_as_requests_does(monkeypatch):
    from quanthub.dhan.http import SettledSession

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/bundle.pem")
    settled, plain = SettledSession(), requests.Session()
    urls = ("https://api.dhan.co/v2/trades/1", "https://internal.example/x", "http://127.0.0.1:8000/v2/orders")
    for url in urls:
        assert settled.merge_environment_settings(url, {}, None, None, None) == plain.merge_environment_settings(
            url, {}, None, None, None
        )
    read = []
    monkeypatch.setattr(requests.sessions, "get_environ_proxies", lambda *args, **kwargs: read.append(args) or {})
    answer = settled.merge_environment_settings("https://api.dhan.co/v2/trades/2", {}, None, None, None)
    assert read == [] and answer["proxies"]["https"] == "http://proxy.example:3128"
    answer["proxies"].clear()  # a caller's copy: the next call is not changed by it
    assert settled.merge_environment_settings(urls[0], {}, None, None, None)["proxies"]
    # The session's own settings are part of the answer at once.
    settled.verify = False
    assert settled.merge_environment_settings(urls[0], {}, None, None, None)["verify"] == "/etc/ssl/bundle.pem"
    settled.proxies = {"http": "http://other.example:1"}
    assert (
        settled.merge_environment_settings(urls[2], {}, None, None, None)["proxies"]["http"] == "http://other.example:1"
    )
