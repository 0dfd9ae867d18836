"""manage.py import_dhan_history against Dhan's documented answers (responses; no network)."""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal

import pytest
import responses
from django.core.management import CommandError, call_command

from marketdata.history import SOURCE_CANDLES, SOURCE_OPTIONS, HistoryError, Pacer, history_security_id, near_expiry
from marketdata.models import HistoryFetch, Instrument, MinuteBar, Underlying
from marketdata.tests.dhan_history import API, DhanHistoryServer, fixture

pytestmark = pytest.mark.django_db

DAY = dt.date(2025, 11, 25)  # the recorded answers are from this Tuesday


@pytest.fixture(autouse=True)
def dhan_credentials(settings, monkeypatch):
    settings.DHAN_CLIENT_ID = "1000000001"
    settings.DHAN_ACCESS_TOKEN = "test-access-token"
    monkeypatch.setattr("marketdata.history.time.sleep", lambda s: None)  # pacing is tested on its own


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("import_dhan_history", *args, stdout=out)
    return out.getvalue()


def test_recorded_answers_become_minute_bars_with_their_source(demo_market):
    with responses.RequestsMock() as api:
        api.post(f"{API}/charts/intraday", json=fixture("intraday_index.json"))
        api.post(f"{API}/charts/intraday", json=fixture("intraday_empty.json"))  # today's future, not listed then
        api.post(f"{API}/charts/rollingoption", json=fixture("rollingoption_atm_call.json"))
        api.post(f"{API}/charts/rollingoption", json=fixture("rollingoption_empty.json"))
        out = run("--underlying", "NIFTY", "--from", "2025-11-25", "--to", "2025-11-25", "--strikes", "0")
        bodies = [json.loads(c.request.body) for c in api.calls]
    option = next(b for b in bodies if "drvOptionType" in b and b["drvOptionType"] == "CALL")
    assert option == {
        "securityId": 13,
        "exchangeSegment": "NSE_FNO",
        "instrument": "OPTIDX",
        "expiryFlag": "WEEK",
        "expiryCode": 1,
        "strike": "ATM",
        "drvOptionType": "CALL",
        "requiredData": ["open", "high", "low", "close", "iv", "volume", "strike", "oi", "spot"],
        "fromDate": "2025-11-25",
        "toDate": "2025-11-26",
        "interval": 1,
        "dhanClientId": "1000000001",
    }
    index = next(b for b in bodies if b.get("exchangeSegment") == "IDX_I")
    assert index["securityId"] == "13" and index["instrument"] == "INDEX" and index["oi"] is True

    nifty = Underlying.objects.get(symbol="NIFTY")
    expiry = near_expiry(nifty, DAY, set())
    assert expiry == DAY  # a Tuesday expiry day: its own contracts are the near ones
    sid = history_security_id(nifty, expiry, Decimal("24500"), "CE")
    bars = list(MinuteBar.objects.filter(source=SOURCE_OPTIONS).order_by("minute"))
    assert [b.security_id for b in bars] == [sid, sid, history_security_id(nifty, expiry, Decimal("24550"), "CE")]
    first = bars[0]
    assert (first.open_paise, first.high_paise, first.low_paise, first.close_paise) == (12150, 12440, 12085, 12405)
    assert first.volume == 183300 and first.oi == 4411350 and first.iv == 13.42 and first.spot_paise == 2451235
    assert first.minute == dt.datetime(2025, 11, 25, 9, 25, tzinfo=dt.UTC) + dt.timedelta(hours=-5, minutes=-30)
    contract = Instrument.objects.get(security_id=sid)
    assert contract.is_active is False and contract.kind == "CE" and contract.expiry == expiry
    assert MinuteBar.objects.filter(source=SOURCE_CANDLES, security_id="13").count() == 3
    assert HistoryFetch.objects.count() == 4  # index, future, call, put: the empty ones too
    assert "3 new bar(s)" not in out and "6 new bar(s)" in out


def test_a_month_reruns_without_requests_and_stores_nothing_twice(demo_market):
    server = DhanHistoryServer(minutes=5)
    args = ("--underlying", "NIFTY", "--from", "2025-11-03", "--to", "2025-11-28", "--strikes", "1")
    with responses.RequestsMock() as api:
        server.install(api)
        out = run(*args)
        first_calls = len(api.calls)
    bars = MinuteBar.objects.count()
    assert bars == 20 * 5 * (1 + 6)  # 20 trading days × 5 minutes × (index + ATM±1 calls and puts)
    assert "history [" in out and "100.0%" in out  # the progress bar
    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        server.install(api)
        again = run(*args)
        assert len(api.calls) == 0
    assert MinuteBar.objects.count() == bars
    assert f"0 request(s), {first_calls} range(s) already imported" in again


def test_rate_limit_waits_and_retries_then_no_data_is_an_empty_range(demo_market):
    with responses.RequestsMock() as api:
        api.post(f"{API}/charts/intraday", json=fixture("rate_limited.json"), status=429)
        api.post(f"{API}/charts/intraday", json=fixture("intraday_index.json"))
        api.post(f"{API}/charts/intraday", json=fixture("no_data.json"), status=400)
        api.post(f"{API}/charts/rollingoption", json=fixture("no_data.json"), status=400)
        out = run("--underlying", "NIFTY", "--from", "2025-11-25", "--to", "2025-11-25", "--strikes", "0")
    assert MinuteBar.objects.filter(security_id="13").count() == 3
    assert "3 empty" in out and "failed" not in out
    assert HistoryFetch.objects.filter(bars=0).count() == 3


def test_a_server_error_leaves_the_range_to_a_rerun(demo_market):
    with responses.RequestsMock() as api:
        api.post(f"{API}/charts/intraday", json=fixture("internal_error.json"), status=500)
        api.post(f"{API}/charts/rollingoption", json=fixture("rollingoption_empty.json"))
        out = run("--underlying", "NIFTY", "--from", "2025-11-25", "--to", "2025-11-25", "--strikes", "0")
        assert len(api.calls) >= 3 * 2  # three tries each for the index and the future
    assert "range(s) failed (re-run to retry)" in out
    assert not HistoryFetch.objects.filter(source=SOURCE_CANDLES).exists()
    with responses.RequestsMock() as api:
        api.post(f"{API}/charts/intraday", json=fixture("intraday_index.json"))
        api.post(f"{API}/charts/intraday", json=fixture("intraday_empty.json"))
        run("--underlying", "NIFTY", "--from", "2025-11-25", "--to", "2025-11-25", "--strikes", "0")
        assert all("charts/intraday" in c.request.url for c in api.calls)  # options were done already
    assert MinuteBar.objects.filter(security_id="13").count() == 3


def test_a_refused_token_stops_the_import_and_keeps_what_was_fetched(demo_market):
    with responses.RequestsMock() as api:
        api.post(f"{API}/charts/intraday", json=fixture("intraday_index.json"))
        api.post(f"{API}/charts/intraday", json=fixture("auth_failed.json"), status=401)
        with pytest.raises(CommandError, match="DH-901.*re-run to resume"):
            run("--underlying", "NIFTY", "--from", "2025-11-25", "--to", "2025-11-25", "--strikes", "0")
    assert MinuteBar.objects.filter(security_id="13").count() == 3
    assert HistoryFetch.objects.count() == 1


def test_flags_are_checked_before_any_request(demo_market, settings):
    with responses.RequestsMock(assert_all_requests_are_fired=False):
        with pytest.raises(CommandError, match="after"):
            run("--underlying", "NIFTY", "--from", "2025-11-26", "--to", "2025-11-25")
        with pytest.raises(CommandError, match="not in the instrument master"):
            run("--underlying", "SENSEX", "--from", "2025-11-25", "--to", "2025-11-25")
        with pytest.raises(CommandError, match="strikes"):
            run("--underlying", "NIFTY", "--from", "2025-11-25", "--to", "2025-11-25", "--strikes", "11")
        with pytest.raises(CommandError, match="at most Dhan's 5"):
            run("--underlying", "NIFTY", "--from", "2025-11-25", "--to", "2025-11-25", "--rate", "6")
        settings.DHAN_ACCESS_TOKEN = None
        with pytest.raises(CommandError, match="DHAN_ACCESS_TOKEN"):
            run("--underlying", "NIFTY", "--from", "2025-11-25", "--to", "2025-11-25")


def test_the_pacer_spaces_calls_within_dhans_limit_and_stops_at_the_daily_budget():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    pacer = Pacer(4, per_day=10, clock=lambda: now[0], sleep=sleep)
    for _ in range(10):
        pacer.wait()
    assert slept == [pytest.approx(0.25)] * 9  # evenly spaced: never more than 4 in a second
    with pytest.raises(HistoryError, match="daily"):
        pacer.wait()
    with pytest.raises(ValueError):
        Pacer(5.5)


def test_retention_ages_out_recorded_bars_but_keeps_imported_history():
    from marketdata.retention import prune

    old = dt.datetime(2021, 8, 2, 4, 0, tzinfo=dt.UTC)
    common = {"minute": old, "open_paise": 100, "high_paise": 100, "low_paise": 100, "close_paise": 100}
    MinuteBar.objects.create(security_id="1001", **common)  # recorded from our own feed
    MinuteBar.objects.create(security_id="H13210805C15800", source=SOURCE_OPTIONS, **common)
    prune(dt.datetime(2026, 12, 1, 4, 0, tzinfo=dt.UTC))
    assert list(MinuteBar.objects.values_list("security_id", flat=True)) == ["H13210805C15800"]
