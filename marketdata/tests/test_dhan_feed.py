from __future__ import annotations

import datetime as dt
import json
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


async def test_the_stream_asks_for_each_chain_once_every_3_seconds(feed):
    with responses.RequestsMock() as api:
        api.post(f"{API}/optionchain", json=fixture("option_chain.json"))
        api.post(f"{API}/marketfeed/ltp", json=fixture("ltp.json"))
        feed.ltp_every_s = 0.01
        items = []
        async for item in feed:
            items.append(item)
            if sum(1 for c in api.calls if c.request.url.endswith("/marketfeed/ltp")) >= 6:
                break
        chain_calls = sum(1 for c in api.calls if c.request.url.endswith("/optionchain"))
    assert chain_calls == 2  # seconds 0 and 3 of 6
