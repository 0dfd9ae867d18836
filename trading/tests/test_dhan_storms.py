"""Storms in Dhan's own words: the real Dhan adapter (dhanhq on our contained
HTTP layer, REST only) under the engine on the paper-shaped session
(simulator feed, simulated clock), every call answered through `responses`
with Dhan v2 replies. Outside the storm the local stand-in's exchange answers
(orders, trades, positions, funds, margin, P&L exit); inside it every call
gets an HTML 502 from the gateway, a DH-904 / HTTP 429 throttle, or — the
token having expired — Dhan's DH-901 until the session is renewed. The engine
keeps running, goes REDUCING with one alert per cause, resumes by itself, and
our books equal the broker's after the storm."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from asgiref.sync import sync_to_async
from django.db.models import Sum

from audit.models import AuditRecord
from marketdata.book import QuoteBook
from marketdata.demo import ensure_demo_instruments
from marketdata.feeds.simulator import SimulatorFeed
from quanthub.clock import IST, SimulatedClock
from quanthub.dhan.local import LocalDhan
from quanthub.dhan.session import dhan_client
from risk.models import TradingState
from trading.brokers.dhan import DhanBroker
from trading.engine.engine import Engine
from trading.models import Alert, Fill, Order, Position, Strategy
from trading.orders.reconcile import reconcile

pytestmark = pytest.mark.django_db(transaction=True)
API = "https://api.dhan.co/v2"
AUTH = "https://auth.dhan.co"
FIXTURES = Path(__file__).with_name("fixtures") / "dhan"
DAY = dt.date(2026, 11, 23)
STORM = (dt.time(9, 17, 0), dt.time(9, 18, 30))
BAD_GATEWAY = (
    "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"
)


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


class DhanOverHttp:
    """Every Dhan call of the adapter, answered as Dhan's servers would: the stand-in's
    exchange in fair weather, the storm's reply inside the window (engine clock)."""

    def __init__(self, clock, book, storm: str):
        self.clock, self.book, self.storm = clock, book, storm
        self.exchange = LocalDhan()  # its REST answers only: no server is started
        self.stormed = 0
        self._expired = False

    def in_storm(self) -> bool:
        return STORM[0] <= self.clock.now().astimezone(IST).time() < STORM[1]

    def __call__(self, request):
        parts = urlsplit(request.url)
        if self.in_storm() and self.storm != "expired":
            self.stormed += 1
            if self.storm == "5xx":
                return 502, {"Content-Type": "text/html"}, BAD_GATEWAY
            return 429, {"Retry-After": "1"}, json.dumps(fixture("rate_limited.json"))
        if self.storm == "expired" and self.in_storm() and not self._expired:
            self._expired = True
            self.exchange.renew()  # the token in use expires: Dhan answers DH-901 until a new one is used
        body = json.loads(request.body) if request.body else {}
        quote = self.book.get(str(body.get("securityId", "")))
        if quote is not None:  # a MARKET order fills at the market, as the exchange would
            self.exchange.ltp[quote.security_id] = round(quote.mid, 2)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        status, payload = self.exchange.answer(request.method, parts.path, query, body, request.headers)
        if status == 401 and self.storm == "expired":
            self.stormed += 1
        return status, {"Content-Type": "application/json"}, json.dumps(payload)


@pytest.fixture
def enabled(db, settings, tmp_path):
    ensure_demo_instruments(DAY)
    Strategy.objects.filter(key="vol_oi").update(enabled=True)
    settings.DHAN_API_BASE_URL = API
    settings.DHAN_AUTH_BASE_URL = AUTH
    settings.DHAN_TOKEN_PATH = str(tmp_path / "token")
    settings.DHAN_PIN = "482913"
    settings.DHAN_TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    return settings


def _engine(settings, storm: str):
    start, end = dt.time(9, 15), dt.time(9, 21)
    clock = SimulatedClock(dt.datetime.combine(DAY, start, tzinfo=IST) - dt.timedelta(seconds=1))
    book = QuoteBook()
    dhan = DhanOverHttp(clock, book, storm)
    settings.DHAN_CLIENT_ID, settings.DHAN_ACCESS_TOKEN = dhan.exchange.client_id, dhan.exchange.token
    # At 60× real time: the storm ends at 09:18:30 and the back-off (a wall-clock second at
    # most) must find the broker back before 09:21, however fast the engine works a second.
    feed = SimulatorFeed(
        clock=clock, seed=7, scenario="default", trading_day=DAY, start_time=start, end_time=end, speed=60
    )
    broker = DhanBroker(client=dhan_client(dhan.exchange.client_id, dhan.exchange.token, base_url=API), timeout_s=2.0)
    engine = Engine(feed=feed, broker=broker, clock=clock, book=book, reconcile_every_s=5)
    engine.outages.max_delay_s = 1.0
    engine.outages.settle_s = 0.0  # the session passes in a few wall seconds
    return engine, broker, dhan


async def _books_agree(dhan) -> bool:
    # The engine closed its broker at the session's end: a fresh one reads Dhan's books.
    broker = DhanBroker(client=dhan_client(dhan.exchange.client_id, dhan.exchange.token, base_url=API), timeout_s=2.0)
    try:
        result = await reconcile(broker, clock=dhan.clock)
    finally:
        await broker.close()
    ours_fills = set(await sync_to_async(list)(Fill.objects.values_list("broker_trade_id", flat=True)))
    theirs_fills = {t["exchangeTradeId"] for t in dhan.exchange.trades}
    ours = (await Position.objects.aaggregate(n=Sum("net_quantity")))["n"] or 0
    theirs = sum(p["netQty"] for p in dhan.exchange.positions())
    return result.clean and ours_fills == theirs_fills and ours == theirs


@pytest.mark.parametrize(
    ("storm", "kind"),
    [("5xx", "Unavailable"), ("throttle", "Throttled"), ("expired", "AuthExpired")],
    ids=["html-502-storm", "dh-904-429-storm", "expired-token"],
)
async def test_a_dhan_storm_leaves_the_engine_running_reducing_with_alerts_then_reconciled(enabled, storm, kind):
    engine, broker, dhan = await sync_to_async(_engine)(enabled, storm)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        for base in (API, AUTH):
            for method in (responses.GET, responses.POST, responses.PUT, responses.DELETE):
                api.add_callback(method, re.compile(re.escape(base) + r"/.*"), callback=dhan)
        stats = await engine.run()  # returns at the session's end: it did not die in the storm
        agree = await _books_agree(dhan)
    assert stats.snapshots > 100 and dhan.stormed >= 1
    assert dhan.exchange.orders, "the session traded through the Dhan adapter"
    changes = await sync_to_async(list)(
        AuditRecord.objects.filter(action="trading_state.changed").order_by("seq").values_list("payload", "created_at")
    )
    went = [change["new"] for change, _ in changes]
    assert TradingState.State.REDUCING in went  # REDUCING while Dhan failed, and ACTIVE again after
    assert went[went.index(TradingState.State.REDUCING) :].count(TradingState.State.ACTIVE) >= 1
    if storm != "expired":  # every call fails in the storm: nothing may count as the broker back
        assert went == [TradingState.State.REDUCING, TradingState.State.ACTIVE]
        reduced_at, resumed_at = (at.astimezone(IST).time() for _, at in changes)  # the engine's clock
        assert STORM[0] <= reduced_at < STORM[1] <= resumed_at, f"REDUCING {reduced_at}, ACTIVE {resumed_at}"
    alerts = await sync_to_async(list)(Alert.objects.values_list("level", "title"))
    titles = [title for _, title in alerts]
    if storm == "expired":
        assert ("CRITICAL", "Broker token expired") in alerts
        assert broker.token == dhan.exchange.token  # the running broker took the renewed token
    else:
        assert titles.count(f"Broker failing ({kind}): engine REDUCING") == 1  # one, not one a second
        assert any(title.startswith("Broker back after") for title in titles)
    assert (await TradingState.objects.aget(account="default")).state == TradingState.State.ACTIVE
    assert agree  # reconciled: our orders, fills and positions are Dhan's
    assert not await Order.objects.filter(state__in=["NEW", "SUBMITTING"]).aexists()
