"""Storms from the outside world during a live-shaped session: a broker 5xx
storm, a throttle storm, an expired token, the database going away. The
engine keeps running, the account goes REDUCING with one alert per cause,
exits go on, and once the storm passes it resumes by itself and its books
agree with the broker's."""

from __future__ import annotations

import datetime as dt

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError
from django.db.models import Sum

from audit.models import AuditRecord
from marketdata.book import QuoteBook
from marketdata.demo import ensure_demo_instruments
from marketdata.feeds.simulator import SimulatorFeed
from quanthub.clock import IST, SimulatedClock
from risk.models import TradingState
from trading.brokers.base import AuthExpired, Throttled, Unavailable
from trading.brokers.paper import PaperBroker
from trading.engine.engine import Engine
from trading.models import Alert, Fill, Order, PaperPosition, PaperTrade, Position, Strategy
from trading.orders.reconcile import reconcile

pytestmark = pytest.mark.django_db(transaction=True)
DAY = dt.date(2026, 11, 23)
STORM = (dt.time(9, 17, 0), dt.time(9, 18, 30))  # across the 09:16:30 probe's life


class Stormy:
    """The paper broker, failing every call inside the storm window (engine clock)."""

    def __init__(self, inner: PaperBroker, clock, error, *, renews: bool = False):
        self.inner, self.clock, self.error, self.renews = inner, clock, error, renews
        self.name = inner.name
        self.failed = 0
        self.renewed = 0
        self.states_seen: set[str] = set()

    def _storm(self) -> bool:
        now = self.clock.now().astimezone(IST).time()
        return STORM[0] <= now < STORM[1] and not (self.renews and self.renewed)

    def _maybe_fail(self):
        if self._storm():
            self.failed += 1
            self.states_seen.add(TradingState.objects.filter(account="default").values_list("state", flat=True).first())
            raise self.error()

    async def renew_session(self) -> bool:
        if self.renews:  # the new token works from the next call on
            self.renewed += 1
            return True
        return False

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name in ("on_market_data", "close"):
            return attr

        async def call(*args, **kwargs):
            await sync_to_async(self._maybe_fail)()
            return await attr(*args, **kwargs)

        return call


def _engine(error, *, renews=False):
    start, end = dt.time(9, 15), dt.time(9, 21)
    clock = SimulatedClock(dt.datetime.combine(DAY, start, tzinfo=IST) - dt.timedelta(seconds=1))
    book = QuoteBook()
    # At 60× real time: the storm ends at 09:18:30 and the back-off (a wall-clock second at
    # most) must find the broker back before 09:21, however fast the engine works a second.
    feed = SimulatorFeed(
        clock=clock, seed=7, scenario="default", trading_day=DAY, start_time=start, end_time=end, speed=60
    )
    broker = Stormy(PaperBroker(clock=clock, book=book), clock, error, renews=renews)
    engine = Engine(feed=feed, broker=broker, clock=clock, book=book, reconcile_every_s=5)
    engine.outages.max_delay_s = 1.0
    engine.outages.settle_s = 0.0  # the session passes in a few wall seconds
    return engine, broker


@pytest.fixture
def enabled(db):
    ensure_demo_instruments(DAY)
    Strategy.objects.filter(key="vol_oi").update(enabled=True)


async def _books_agree(broker):
    result = await reconcile(broker.inner, clock=broker.inner.clock)
    fills = set(await sync_to_async(list)(Fill.objects.values_list("broker_trade_id", flat=True)))
    trades = set(await sync_to_async(list)(PaperTrade.objects.values_list("trade_id", flat=True)))
    ours = (await Position.objects.aaggregate(n=Sum("net_quantity")))["n"] or 0
    theirs = (await PaperPosition.objects.aaggregate(n=Sum("net_quantity")))["n"] or 0
    return result.clean and fills == trades and ours == theirs


async def _state_changes():
    """(new state, engine time) of every trading-state change, in order."""
    rows = await sync_to_async(list)(
        AuditRecord.objects.filter(action="trading_state.changed").order_by("seq").values_list("payload", "created_at")
    )
    return [(payload["new"], at.astimezone(IST).time()) for payload, at in rows]


async def _engine_alerts():
    return await sync_to_async(list)(Alert.objects.filter(source="engine").values_list("level", "title"))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (lambda: Unavailable("HTTP 503 <html><body>Service Unavailable</body></html>"), "Unavailable"),
        (lambda: Throttled("HTTP 429 Too Many Requests", retry_after=0.2), "Throttled"),
    ],
    ids=["5xx-storm", "throttle-storm"],
)
async def test_a_broker_storm_leaves_the_engine_running_reducing_with_one_alert_then_reconciled(enabled, error, kind):
    engine, broker = await sync_to_async(_engine)(error)
    stats = await engine.run()  # returns at the session's end: it did not die in the storm
    assert broker.failed >= 2 and stats.snapshots > 100
    assert TradingState.State.REDUCING in broker.states_seen  # REDUCING during the storm
    alerts = await _engine_alerts()
    assert alerts.count(("WARNING", f"Broker failing ({kind}): engine REDUCING")) == 1  # one, not one a second
    assert any(title.startswith("Broker back after") for _, title in alerts)
    state = await TradingState.objects.aget(account="default")
    assert state.state == TradingState.State.ACTIVE  # resumed by itself
    # One REDUCING in the storm and one ACTIVE after it, each on the engine's clock: no
    # second without a broker call (nothing to sync) counts as the broker back.
    (reduced, reduced_at), (resumed, resumed_at) = await _state_changes()
    assert (reduced, resumed) == (TradingState.State.REDUCING, TradingState.State.ACTIVE)
    assert STORM[0] <= reduced_at < STORM[1] <= resumed_at
    stamps = await sync_to_async(list)(Alert.objects.filter(source="engine").values_list("created_at", flat=True))
    assert all(STORM[0] <= at.astimezone(IST).time() for at in stamps)  # the engine's clock, not the wall
    assert await _books_agree(broker)
    assert not await Order.objects.filter(state__in=["NEW", "SUBMITTING"]).aexists()


async def test_an_expired_token_raises_a_critical_alert_renews_and_carries_on_without_a_restart(enabled):
    engine, broker = await sync_to_async(_engine)(lambda: AuthExpired("DH-901: access token expired"), renews=True)
    await engine.run()
    assert broker.renewed >= 1  # the running broker renewed its session
    alerts = await _engine_alerts() + await sync_to_async(list)(
        Alert.objects.filter(source="token").values_list("level", "title")
    )
    assert ("CRITICAL", "Broker token expired") in alerts
    assert (await TradingState.objects.aget(account="default")).state == TradingState.State.ACTIVE
    assert await _books_agree(broker)


async def test_a_lost_database_degrades_and_recovers_without_ending_the_engine(enabled, monkeypatch):
    engine, broker = await sync_to_async(_engine)(lambda: Unavailable("never"))
    broker.error = None
    original = Engine._second_reads
    down = {"left": 25}

    def flaky(self, now):
        if dt.time(9, 17) <= now.astimezone(IST).time() and down["left"] > 0:
            down["left"] -= 1
            raise OperationalError("server closed the connection unexpectedly")
        return original(self, now)

    monkeypatch.setattr(Engine, "_second_reads", flaky)
    engine.outages.min_delay_s = engine.outages.max_delay_s = 0.001  # a simulated session at full speed
    monkeypatch.setattr(Stormy, "_storm", lambda self: False)
    stats = await engine.run()
    assert down["left"] == 0 and stats.snapshots > 100
    titles = [t for _, t in await _engine_alerts()]
    assert titles.count("Database unreachable: engine REDUCING") == 1
    assert any(t.startswith("Database back after") for t in titles)
    assert await _books_agree(broker)
