from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import responses

from marketdata.feeds.base import CE, PE
from marketdata.feeds.dhan import DhanFeed, UnderlyingFeed
from quanthub.clock import IST, SimulatedClock

API = "https://api.dhan.co/v2"
FIXTURES = Path(__file__).parents[2] / "trading" / "tests" / "fixtures" / "dhan"


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def feed():
    from dhanhq import DhanContext, dhanhq

    client = dhanhq(DhanContext("1000000001", "test-access-token"))
    nifty = UnderlyingFeed(
        "NIFTY",
        "13",
        dt.date(2026, 11, 24),
        "9132611240",
        {(24500.0, CE): "1001", (24500.0, PE): "1002", (24550.0, CE): "1003", (24550.0, PE): "1004"},
    )
    clock = SimulatedClock(dt.datetime(2026, 11, 24, 10, 0, tzinfo=IST))
    return DhanFeed(client=client, underlyings=[nifty], clock=clock, timeout_s=1.0)


async def test_an_option_chain_becomes_a_snapshot(feed):
    with responses.RequestsMock() as api:
        api.post(f"{API}/optionchain", json=fixture("option_chain.json"))
        snapshot = await feed.poll_chain(feed.underlyings[0])
        body = json.loads(api.calls[0].request.body)
    assert body["UnderlyingScrip"] == 13 and body["Expiry"] == "2026-11-24"
    assert snapshot.security_id.tolist() == ["1001", "1002", "1003", "1004"]
    assert snapshot.strike.tolist() == [24500.0, 24500.0, 24550.0, 24550.0]
    assert snapshot.option_type.tolist() == [CE, PE, CE, PE]
    assert snapshot.bid[0] == 120.45 and snapshot.ask_qty[0] == 1300 and snapshot.prev_oi[1] == 470000
    assert snapshot.delta[1] == -0.47 and snapshot.underlying_ltp == 24512.35
    assert np.all(snapshot.flags == 0)


async def test_ltp_polls_indices_futures_and_india_vix(feed):
    with responses.RequestsMock() as api:
        api.post(f"{API}/marketfeed/ltp", json=fixture("ltp.json"))
        ticks = await feed.poll_ltp()
        body = json.loads(api.calls[0].request.body)
    assert body["IDX_I"] == [13, 21] and body["NSE_FNO"] == [9132611240]
    by_symbol = {t.symbol: t for t in ticks}
    assert by_symbol["NIFTY"].ltp == 24512.35 and by_symbol["INDIAVIX"].kind == "VIX"
    assert by_symbol["NIFTY-FUT"].kind == "FUT"


async def test_a_failed_poll_is_skipped_and_counted_not_raised(feed):
    with responses.RequestsMock() as api:
        api.post(f"{API}/optionchain", body=requests.exceptions.ReadTimeout("timed out"))
        api.post(f"{API}/marketfeed/ltp", json={"errorCode": "DH-904", "errorMessage": "rate"}, status=429)
        assert await feed.poll_chain(feed.underlyings[0]) is None
        assert await feed.poll_ltp() == []
    assert feed.failures == 2


@pytest.mark.parametrize(
    ("status", "body", "kind", "code"),
    [
        (429, {"data": {"805": "Too many requests"}, "status": "failed"}, "DhanThrottled", "805"),
        (200, {"data": {"805": "Too many requests"}, "status": "failed"}, "DhanThrottled", "805"),
        (400, {"data": {"806": "Data APIs not Subscribed"}, "status": "failed"}, "DhanDataPlan", "806"),
        (401, {"data": {"807": "Access token is expired"}, "status": "failed"}, "DhanAuthError", "807"),
        (200, {"data": {"807": "Access token is expired"}, "status": "failed"}, "DhanAuthError", "807"),
    ],
)
async def test_data_api_envelopes_are_typed_backed_off_and_alerted_once(feed, status, body, kind, code):
    alerts = []
    feed.alert = lambda level, title, message: alerts.append((level, title, message))
    with responses.RequestsMock() as api:
        api.post(f"{API}/marketfeed/ltp", json=body, status=status)
        assert await feed.poll_ltp() == []  # never raises (the 200 envelope used to end the engine)
        assert await feed.poll_ltp() == []  # backing off: no second request
        assert sum(1 for c in api.calls if c.request.url.endswith("/marketfeed/ltp")) == 1
    await asyncio.sleep(0.1)  # the alert is sent off the loop
    error = feed.errors["ltp"]
    assert type(error).__name__ == kind and error.code == code and error.message
    assert len(alerts) == 1 and code in alerts[0][2]
    assert alerts[0][0] == ("WARNING" if code == "805" else "CRITICAL")


async def test_a_throttled_call_doubles_its_back_off(feed):
    with responses.RequestsMock() as api:
        api.post(f"{API}/marketfeed/ltp", json={"data": {"805": "Too many requests"}, "status": "failed"}, status=429)
        await feed.poll_ltp()
        first = feed._backoff["ltp"]
        feed._blocked_until["ltp"] = 0  # as if the wait had passed
        await feed.poll_ltp()
    assert feed._backoff["ltp"] == 2 * first


async def test_the_pacer_keeps_3_seconds_between_chains_of_one_underlying_and_expiry():
    from marketdata.feeds.dhan import ChainPacer

    now = [0.0]
    pacer = ChainPacer(3.0, monotonic=lambda: now[0])
    key = ("NIFTY", dt.date(2026, 11, 24))
    assert pacer.wait_s(key) == 0.0
    await pacer.acquire(key)
    pacer.started(key)  # the request leaves at 0.0
    now[0] = 0.4  # a slow LTP call later, the chain loop asks again
    assert pacer.wait_s(key) == pytest.approx(2.6 + pacer.margin_s)  # the gap, and a margin for the wire
    assert pacer.wait_s(("NIFTY", dt.date(2026, 12, 1))) == 0.0  # another expiry is another key
    assert pacer.wait_s(("BANKNIFTY", dt.date(2026, 11, 24))) == 0.0


async def test_a_slow_ltp_poll_never_brings_two_chain_requests_closer_than_the_gap(feed):
    starts = []
    feed.pacer.gap_s = 0.3
    feed.ltp_every_s = 0.01

    def chain_callback(request):
        starts.append(time.monotonic())
        return 200, {}, json.dumps(fixture("option_chain.json"))

    def slow_ltp(request):
        time.sleep(0.25)  # one slow LTP poll
        return 200, {}, json.dumps(fixture("ltp.json"))

    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        api.add_callback(responses.POST, f"{API}/optionchain", callback=chain_callback)
        api.add_callback(responses.POST, f"{API}/marketfeed/ltp", callback=slow_ltp)
        async for _item in feed:
            if len(starts) >= 4:
                break
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 0.3 - 0.01, gaps


async def test_ltp_comes_by_the_market_feed_with_quotes_and_subscriptions(settings):
    from quanthub.dhan import packets
    from quanthub.dhan.local import LocalDhan
    from quanthub.dhan.streams import MarketFeedStream

    local = await LocalDhan().start()
    try:
        from dhanhq import DhanContext, dhanhq

        nifty = UnderlyingFeed("NIFTY", "13", dt.date(2026, 11, 24), "9132611240", {(24500.0, CE): "1001"})
        clock = SimulatedClock(dt.datetime(2026, 11, 24, 10, 0, tzinfo=IST))
        feed = DhanFeed(
            client=dhanhq(DhanContext(local.client_id, local.token)),
            underlyings=[nifty],
            clock=clock,
            options={"1001": "NIFTY 24 Nov 26 24500 CE"},
        )
        feed.pacer.gap_s = 60  # one chain request only
        feed.market_feed = MarketFeedStream(
            local.feed_url,
            client_id=local.client_id,
            token_provider=lambda: local.token,
            silence_s=2,
            on_packets=feed.on_packets,
            instruments=feed.base_instruments(),
        )
        with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
            api.post(f"{API}/optionchain", json=fixture("option_chain.json"))
            stream = feed.stream().__aiter__()
            first = await asyncio.wait_for(stream.__anext__(), 5)  # the chain
            assert first.underlying == "NIFTY"
            await feed.subscribe(["1001"])
            await asyncio.sleep(0.2)
            await local.push_feed(
                packets.ticker("IDX_I", 13, 24512.35, 1764583200)
                + packets.full("NSE_FNO", 1001, 120.5, 1764583200, bid=120.45, ask=120.55, bid_qty=650, ask_qty=1300)
            )
            ticks = [await asyncio.wait_for(stream.__anext__(), 5) for _ in range(2)]
            await feed.close()
            await stream.aclose()
        by_symbol = {t.symbol: t for t in ticks}
        assert by_symbol["NIFTY"].ltp == 24512.35 and by_symbol["NIFTY"].kind == "INDEX"
        option = by_symbol["NIFTY 24 Nov 26 24500 CE"]
        assert (option.kind, option.bid, option.ask, option.ask_qty) == ("OPT", 120.45, 120.55, 1300)
        login = local.feed_logins[0]
        assert login["version"] == "2" and login["authType"] == "2" and login["clientId"] == local.client_id
        subscribed = {(i["ExchangeSegment"], i["SecurityId"]) for m in local.subscriptions for i in m["InstrumentList"]}
        assert {("IDX_I", "13"), ("IDX_I", "21"), ("NSE_FNO", "9132611240"), ("NSE_FNO", "1001")} <= subscribed
        assert all(m["RequestCode"] == 21 for m in local.subscriptions)
    finally:
        await local.stop()


async def test_a_disconnect_packet_is_typed(settings):
    from quanthub.dhan.errors import DhanAuthError
    from quanthub.dhan.local import LocalDhan
    from quanthub.dhan.streams import MarketFeedStream

    local = await LocalDhan().start()
    try:
        stream = MarketFeedStream(
            local.feed_url,
            client_id=local.client_id,
            token_provider=lambda: "expired-token-0000000",
            silence_s=2,
            on_packets=lambda parsed, at: None,
        )
        stream.start()
        for _ in range(100):
            if isinstance(stream.last_error, DhanAuthError):
                break
            await asyncio.sleep(0.02)
        await stream.stop()
        assert isinstance(stream.last_error, DhanAuthError) and stream.last_error.code == "807"
        assert "expired" in stream.last_error.message
    finally:
        await local.stop()
