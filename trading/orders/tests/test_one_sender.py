"""One sender per account, as a property: Kill Alls worked at once for the REST
API, the dashboard and the CLI, while the engine's own strategies send their
exits, never put more orders at the broker in any one second than the limit,
and never send two exits for one position quantity. (The entry points
themselves are driven in test_entry_points.py.)"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from decimal import Decimal
from unittest import mock

import pytest
from django.db import connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketdata.book import QuoteBook
from marketdata.models import Instrument
from quanthub.clock import RealClock
from risk.models import RiskLimits
from trading.brokers.chaos import ChaosBroker
from trading.brokers.paper import PaperBroker
from trading.brokers.ratelimit import DatabaseWindow, SharedRateLimiter
from trading.conftest import quotes_for
from trading.models import FlattenRequest, Order, PaperPosition, Position
from trading.orders import flatten, root
from trading.orders.claims import ExitClaimed
from trading.orders.root import build_order_path

pytestmark = pytest.mark.django_db(transaction=True)
CAPITAL = Decimal("100000000")


class Recorder:
    """Every broker the order path builds for the account, wrapped so each order call is timed."""

    def __init__(self, book):
        self.book = book
        self.brokers: list[ChaosBroker] = []

    def build(self, name, *, account, clock, book, seed=7, **options):
        broker = ChaosBroker(PaperBroker(account=account, clock=clock, book=book, capital=CAPITAL), fault_rate=0.0)
        self.brokers.append(broker)
        return broker

    def most_in_one_second(self) -> int:
        merged = ChaosBroker(PaperBroker(), fault_rate=0.0)
        merged.calls = sorted(c for b in self.brokers for c in b.calls)
        return merged.max_in_window(1.0)


def _open(account: str, instruments, lots: list[int]) -> None:
    book = QuoteBook()
    quotes_for(instruments, book, RealClock().now())
    opener = build_order_path(
        account,
        clock=RealClock(),
        book=book,
        broker=PaperBroker(account=account, book=book, capital=CAPITAL),
        shared=False,
    )
    opener.limiter._rate = 100_000

    async def go():
        for inst, n in zip(instruments, lots, strict=True):
            order = await opener.oms.submit(
                instrument=inst,
                side="BUY",
                quantity=inst.lot_size * n,
                limit_price=Decimal(str(book.get(inst.security_id).ask)),
                check_slippage_rule=False,
            )
            assert order.state == Order.State.FILLED

    asyncio.run(go())


def _opened(account: str, lots: list[int]) -> list[Instrument]:
    """Options of both underlyings, ``lots[i]`` lots of the i-th bought and filled."""
    instruments = list(
        Instrument.objects.select_related("underlying")
        .filter(kind__in=["CE", "PE"], is_active=True)
        .order_by("underlying__symbol", "strike", "kind")[: len(lots)]
    )
    _open(account, instruments, lots)
    return instruments


def _assert_flat_and_sold_once(account: str, instruments, lots: list[int]) -> None:
    """Never two exits for one quantity: the broker's book is flat, not short, and what
    was sold is exactly what was held."""
    for inst, n in zip(instruments, lots, strict=True):
        position = PaperPosition.objects.get(account=account, security_id=inst.security_id)
        assert position.net_quantity == 0, (inst.trading_symbol, position.net_quantity)
        sold = sum(o.filled_quantity for o in Order.objects.filter(account=account, instrument=inst, side="SELL"))
        assert sold == inst.lot_size * n


def _engine_exits(account: str, instruments, book) -> None:
    """The engine's strategies selling their positions through the account's shared window."""
    path = build_order_path(account, clock=RealClock(), book=book)  # built as the engine's is

    async def go():
        for inst in instruments:
            held = await PaperPosition.objects.filter(account=account, security_id=inst.security_id).afirst()
            if held is None or held.net_quantity <= 0:
                continue
            try:
                await path.oms.submit(
                    instrument=inst,
                    side="SELL",
                    quantity=held.net_quantity,
                    limit_price=Decimal(str(book.get(inst.security_id).bid)),
                    purpose=Order.Purpose.EXIT,
                    reason="take-profit",
                )
            except ExitClaimed:
                pass  # a Kill All already covers these units

    asyncio.run(go())


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    lots=st.lists(st.integers(1, 3), min_size=2, max_size=5),
    senders=st.lists(st.sampled_from(["api", "dashboard", "cli"]), min_size=1, max_size=3),
    engine_exits=st.booleans(),
    stagger=st.floats(0.0, 0.3),
)
def test_concurrent_kill_alls_and_engine_exits_stay_under_the_limit_and_never_exit_twice(
    demo_market, lots, senders, engine_exits, stagger
):
    """Each Kill All works on an order path of its own (its own broker and limiter, as a
    standalone Kill All in another process has), sharing only the account's rate window
    and the database — the case the hand-over cannot rule out: a stuck engine, or
    requests that raced past each other. The engine's strategies send their exits at
    the same time."""
    account = f"prop{time.monotonic_ns() % 10**9}"
    instruments = _opened(account, lots)
    recorder = Recorder(None)
    book = root.stored_book(instruments)
    limit = RiskLimits.active().order_rate_per_s

    def path():
        return build_order_path(
            account,
            clock=RealClock(),
            book=book,
            broker=recorder.build("paper", account=account, clock=RealClock(), book=book),
        )

    paths = [path() for _ in senders]
    engine = path()

    async def kill(p, delay, who):
        await asyncio.sleep(delay)
        return await flatten.kill_all(p, actor=f"{who}:prop", reason="property", deadline_s=20.0)

    async def exits(p):
        for inst in instruments:
            held = await Position.objects.filter(account=account, instrument=inst).afirst()
            if held is None or held.net_quantity <= 0:
                continue
            try:
                await p.oms.submit(
                    instrument=inst,
                    side="SELL",
                    quantity=held.net_quantity,
                    limit_price=Decimal(str(book.get(inst.security_id).bid)),
                    purpose=Order.Purpose.EXIT,
                    reason="take-profit",
                )
            except ExitClaimed:
                pass  # a Kill All already covers these units

    async def go():
        jobs = [kill(p, i * stagger, who) for i, (p, who) in enumerate(zip(paths, senders, strict=True))]
        if engine_exits:
            jobs.append(exits(engine))
        return await asyncio.gather(*jobs)

    results = asyncio.run(go())
    # Within the limit in every one-second window, across every sender of the account.
    assert recorder.most_in_one_second() <= limit
    _assert_flat_and_sold_once(account, instruments, lots)
    assert any(r.flat for r in results if r is not None)


def test_two_processes_share_one_window():
    """Two senders of one account (the engine and a standalone Kill All), each with its
    own limiter: the sends they claim together stay within the rate in every second."""
    claimed: list[float] = []

    class Recording(DatabaseWindow):
        def claim(self, rate, priority):
            now = time.time()
            wait = super().claim(rate, priority)
            if wait == 0:
                claimed.append(now)
            return wait

    async def sender(limiter, n, priority):
        for _ in range(n):
            await limiter.acquire(priority=priority)

    async def go():
        first = SharedRateLimiter("acct-w", 9, window=Recording("acct-w"))
        second = SharedRateLimiter("acct-w", 9, window=Recording("acct-w"))
        await asyncio.gather(sender(first, 12, False), sender(second, 12, True))

    asyncio.run(go())
    claimed.sort()
    worst = max(sum(1 for t in claimed if start <= t <= start + 1.0) for start in claimed)
    assert len(claimed) == 24 and worst <= 9


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    lots=st.lists(st.integers(1, 3), min_size=2, max_size=4),
    senders=st.lists(st.sampled_from(["api", "dashboard", "cli"]), min_size=2, max_size=3),
    engine_exits=st.booleans(),
)
def test_kill_all_pressed_at_once_on_the_api_the_dashboard_and_the_cli_stays_under_the_limit(
    demo_market, make_user, lots, senders, engine_exits
):
    """The real entry points, each on its own thread as a web worker or a shell would
    be, pressed at the same moment (with no engine running, so each may work its
    request standalone), while the engine's strategies send their exits: never more
    orders at the broker in one second than the limit, never two exits for one
    quantity, and every press hears a result."""
    from django.core.management import call_command
    from django.test import Client, override_settings
    from rest_framework.test import APIClient

    from quanthub.roles import TRADER
    from trading import views

    account = f"press{time.monotonic_ns() % 10**9}"
    instruments = _opened(account, lots)
    book = root.stored_book(instruments)
    quotes_for(instruments, book, RealClock().now())  # stored too: the standalone paths price from them
    recorder = Recorder(book)
    limit = RiskLimits.active().order_rate_per_s
    user = make_user(f"trader-{account}", TRADER)
    barrier = threading.Barrier(len(senders) + int(engine_exits))
    heard: list[object] = []

    def press(who: str) -> None:
        try:
            barrier.wait(10)
            if who == "api":
                client = APIClient()
                client.force_authenticate(user)
                response = client.post("/api/v1/risk/kill-all/", {"reason": "press", "timeout_s": 20}, format="json")
                heard.append(response.status_code)
            elif who == "dashboard":
                client = Client()
                client.force_login(user)
                heard.append(client.post("/trading/kill-all/").status_code)
            else:
                out = io.StringIO()
                call_command("kill_all", "--account", account, "--reason", "press", "--timeout", "20", stdout=out)
                heard.append(out.getvalue())
        finally:
            connections.close_all()

    def strategy_exits() -> None:
        try:
            barrier.wait(10)
            _engine_exits(account, instruments, book)
        finally:
            connections.close_all()

    with override_settings(QUANTHUB_ACCOUNT=account), mock.patch.object(root, "build_broker", recorder.build):
        original = root.build_order_path

        def recorded_path(acct, *, broker=None, **kw):
            # The engine's path too: every broker any sender uses is timed.
            if broker is None:
                broker = recorder.build("paper", account=acct, clock=kw["clock"], book=kw["book"])
            return original(acct, broker=broker, **kw)

        with (
            mock.patch.object(root, "build_order_path", recorded_path),
            mock.patch(f"{__name__}.build_order_path", recorded_path),
        ):
            threads = [threading.Thread(target=press, args=(who,)) for who in senders]
            if engine_exits:
                threads.append(threading.Thread(target=strategy_exits))
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            views.wait_for_jobs(60)  # the dashboard works its press on a thread of its own
    assert len(heard) == len(senders)
    assert all(h == 200 for h in heard if isinstance(h, int)), heard
    assert all("Kill All (" in h for h in heard if isinstance(h, str)), heard
    assert sum(len(b.calls) for b in recorder.brokers) >= len(instruments)  # every send was timed
    assert recorder.most_in_one_second() <= limit
    _assert_flat_and_sold_once(account, instruments, lots)
    assert not FlattenRequest.objects.filter(account=account).exclude(state=FlattenRequest.State.DONE).exists()
