"""manage.py run_engine [--broker paper|dhan] [--feed sim|replay|dhan] [--speed N|max] [--serve]
[--seed N] [--port N] [--host H] [--date YYYY-MM-DD] [--scenario FILE|default|none] [--no-standby]

Every flag is checked before anything starts. With --serve the web app is
served from the same process and event loop (daphne), on the in-memory
channel layer: the embedded default the README's run command starts.

One engine trades an account at a time (``trading.engine.lock``). When
another engine holds the account's lock this one waits as a standby: it beats
STANDBY every second, tries the lock twice a second and, once it has it, starts
like any engine (OMS recovery and reconciliation first). ``--no-standby``
refuses to wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import time
import uuid

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from marketdata.management.commands._feedargs import parse_date, parse_speed

log = logging.getLogger(__name__)


STANDBY_POLL_S = 0.5  # a standby tries the lock this often: a takeover well within 10 s of a death


def _standby_beat(engine_id: str, plan, role: str) -> None:
    from trading.models import EngineHeartbeat

    now = timezone.now()
    row, created = EngineHeartbeat.objects.get_or_create(
        engine_id=engine_id,
        defaults={
            "account": settings.QUANTHUB_ACCOUNT,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "role": role,
            "broker": plan["broker"],
            "feed": plan["feed"],
            "started_at": now,
            "beat_at": now,
        },
    )
    if not created:
        EngineHeartbeat.objects.filter(pk=row.pk).update(role=role, beat_at=now)


def _claim(account: str, engine_id: str) -> dt.datetime | None:
    """With the lock held no other engine trades the account: mark any row still
    saying ACTIVE (a killed engine's) STOPPED. Returns the latest market time an
    engine of the account reached (where a takeover on the simulator carries on)."""
    from trading.models import EngineHeartbeat

    Role = EngineHeartbeat.Role
    others = EngineHeartbeat.objects.filter(account=account).exclude(engine_id=engine_id)
    last = (
        others.filter(role__in=[Role.ACTIVE, Role.STOPPED], market_time__isnull=False)
        .order_by("-market_time")
        .values_list("market_time", flat=True)
        .first()
    )
    others.filter(role=Role.ACTIVE).update(role=Role.STOPPED)
    return last


def last_weekday(day: dt.date) -> dt.date:
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return day


class Command(BaseCommand):
    help = "Run the trading engine (and, with --serve, the web app in the same process)."
    signalled = False

    def add_arguments(self, parser):
        parser.add_argument("--broker", choices=["paper", "dhan"], default=None)
        parser.add_argument("--feed", choices=["sim", "replay", "dhan"], default=None)
        parser.add_argument("--speed", default=None, help="N× real time, or max (default: 1 with --serve, else max).")
        parser.add_argument("--serve", action="store_true", help="Also serve the web app from this process.")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--date", help="Trading day for the simulator or the replay (YYYY-MM-DD).")
        parser.add_argument("--scenario", default="default", help="Simulator scenario: a JSON file, default or none.")
        parser.add_argument(
            "--force",
            action="store_true",
            help="With --broker dhan: start even when a pre-flight line fails (audited).",
        )
        parser.add_argument(
            "--no-standby",
            action="store_true",
            help="Exit with an error instead of waiting as a standby when another engine holds the account.",
        )

    def handle(self, *args, **options):
        broker = options["broker"] or settings.QUANTHUB_BROKER
        feed = options["feed"] or settings.QUANTHUB_FEED
        speed = parse_speed(options["speed"] or ("1" if options["serve"] else "max"))
        if broker == "dhan" and not (
            settings.DHAN_CLIENT_ID and (settings.DHAN_ACCESS_TOKEN or settings.DHAN_TOTP_SECRET)
        ):
            raise CommandError(
                "--broker dhan needs DHAN_CLIENT_ID and DHAN_ACCESS_TOKEN (or DHAN_TOTP_SECRET with "
                "DHAN_PIN) in the environment"
            )
        if feed == "dhan" and not settings.DHAN_CLIENT_ID:
            raise CommandError("--feed dhan needs DHAN_CLIENT_ID (and a token) in the environment")
        if broker == "dhan" and feed != "dhan":
            raise CommandError("--broker dhan trades real money: it needs the live feed (--feed dhan)")
        if feed == "replay" and not options["date"]:
            raise CommandError("--feed replay needs --date YYYY-MM-DD of recorded data")
        if feed == "dhan" and options["date"]:
            raise CommandError("--date is for the simulator and replays, not the live feed")
        if not 0 < options["port"] < 65536:
            raise CommandError(f"--port must be between 1 and 65535, got {options['port']}")
        day = parse_date(options["date"]) if options["date"] else None
        scenario = None if options["scenario"] == "none" else options["scenario"]
        if scenario not in (None, "default"):
            from marketdata.scenarios import Scenario, ScenarioError

            try:
                Scenario.load(scenario)
            except ScenarioError as exc:
                raise CommandError(str(exc)) from None
        if broker == "dhan":
            self._preflight(force=options["force"])
        plan = {
            "broker": broker,
            "feed": feed,
            "speed": speed,
            "day": day,
            "scenario": scenario,
            "seed": options["seed"] if options["seed"] is not None else settings.QUANTHUB_SEED,
        }
        from trading.engine.lock import engine_lock

        account = settings.QUANTHUB_ACCOUNT
        lock = engine_lock(account)
        if not lock.acquire() and options["no_standby"]:
            raise CommandError(
                f"another engine holds account {account} ({lock.describe()}); not waiting as a standby (--no-standby)"
            )
        try:
            if options["serve"]:
                self._serve(plan, lock, options["host"], options["port"])
            else:
                stats = asyncio.run(self._run(plan, lock))
                if stats is None:
                    self.stdout.write("Standby stopped before taking over.")
                else:
                    self.stdout.write(
                        f"Engine finished: {stats.snapshots} snapshots, {stats.intents} intents, "
                        f"{stats.orders} orders, {stats.refused} refused by the gate."
                    )
        finally:
            lock.release()

    def _preflight(self, *, force: bool) -> None:
        """Live money: every pre-flight line must pass, or ``--force`` says why not (audited)."""
        from audit.chain import append as audit_append
        from quanthub.dhan.preflight import gather

        lines = gather()
        failed = [line for line in lines if not line.ok]
        for line in lines:
            self.stdout.write(f"pre-flight {'PASS' if line.ok else 'FAIL'}  {line.name}: {line.detail}")
        if not failed:
            return
        summary = "; ".join(f"{line.name}: {line.detail}" for line in failed)
        if not force:
            raise CommandError(f"pre-flight failed ({summary}); fix it, or start with --force (audited)")
        audit_append(
            "engine.preflight_forced",
            actor="operator",
            subject=f"account:{settings.QUANTHUB_ACCOUNT}",
            payload={"failed": [line.as_dict() for line in failed]},
        )
        log.warning("engine started despite a failing pre-flight (--force)", extra={"failed": summary})

    def _prepare(self, plan) -> None:
        """The simulator's instruments, and the engine's imports (seconds of a cold start)."""
        from django.utils.module_loading import import_string

        import trading.engine.engine  # noqa: F401
        from marketdata.feeds import FEEDS
        from marketdata.storage import SnapshotWriter  # noqa: F401
        from trading.brokers import BROKERS

        import_string(FEEDS[plan["feed"]])
        import_string(BROKERS[plan["broker"]])
        if plan["feed"] == "sim":
            from marketdata.demo import ensure_demo_instruments

            ensure_demo_instruments(plan["day"] or last_weekday(dt.date.today()))  # noqa: DTZ011

    def _build(self, plan, resume_at: dt.datetime | None = None):
        from marketdata.book import QuoteBook
        from marketdata.feeds import build_feed
        from marketdata.storage import SnapshotWriter
        from quanthub.clock import IST, SESSION_OPEN, RealClock, SimulatedClock
        from trading.brokers import build_broker
        from trading.engine.engine import Engine

        if plan["feed"] == "dhan":
            clock = RealClock()
            feed_options = {}
        else:
            day = plan["day"] or last_weekday(RealClock().today())
            start = dt.datetime.combine(day, SESSION_OPEN, tzinfo=IST)
            feed_options = {"trading_day": day, "date": day, "scenario": plan["scenario"]}
            if plan["feed"] == "sim" and resume_at is not None:
                resume_at = resume_at.astimezone(IST)
                if resume_at.date() == day and resume_at >= start:
                    # A takeover carries on with the session where the dead engine
                    # left it, rather than trading its first minutes a second time.
                    start = resume_at.replace(microsecond=0) + dt.timedelta(seconds=1)
                    feed_options["start_time"] = start.time()
            clock = SimulatedClock(start - dt.timedelta(seconds=1))
        book = QuoteBook()
        feed = build_feed(plan["feed"], clock=clock, seed=plan["seed"], speed=plan["speed"], **feed_options)
        broker = build_broker(
            plan["broker"], account=settings.QUANTHUB_ACCOUNT, clock=clock, book=book, seed=plan["seed"]
        )
        return Engine(
            feed=feed, broker=broker, clock=clock, book=book, account=settings.QUANTHUB_ACCOUNT, writer=SnapshotWriter()
        )

    async def _run(self, plan, lock):
        from asgiref.sync import sync_to_async

        account = settings.QUANTHUB_ACCOUNT
        stopping = asyncio.Event()
        engine = None

        def stop():
            self.signalled = True
            stopping.set()
            if engine is not None:
                engine.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, stop)
            except (NotImplementedError, RuntimeError):
                pass
        engine_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        # Everything that does not depend on the takeover moment happens first,
        # so a standby that gets the lock only has to build and start.
        await sync_to_async(self._prepare)(plan)
        took_over = False
        if not lock.held:
            took_over = await self._standby(plan, lock, engine_id, stopping)
            if not took_over:
                await sync_to_async(_standby_beat)(engine_id, plan, "STOPPED")
                return None
        try:
            resume_at = await sync_to_async(_claim)(account, engine_id)
            engine = await sync_to_async(self._build)(plan, resume_at if took_over else None)
            engine.engine_id = engine_id  # a standby's row turns ACTIVE
            if stopping.is_set():
                engine.stop()
            lost = asyncio.Event()
            watch = asyncio.create_task(lock.watch())
            watch.add_done_callback(lambda t: t.cancelled() or (lost.set(), engine.stop()))
            try:
                stats = await engine.run()
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
        finally:
            lock.release()
        if lost.is_set():
            raise CommandError(
                f"lost the engine lock for account {account} ({lock.describe()}): stopped trading; "
                "another engine may have taken over"
            )
        return stats

    async def _standby(self, plan, lock, engine_id: str, stopping: asyncio.Event) -> bool:
        """Wait until the lock frees up (True) or a stop signal comes (False)."""
        from asgiref.sync import sync_to_async

        message = f"standby: another engine holds account {settings.QUANTHUB_ACCOUNT} ({lock.describe()})"
        log.warning(message, extra={"engine": engine_id})
        self.stdout.write(message)
        self.stdout.flush()
        last_beat = None
        while not stopping.is_set():
            if last_beat is None or time.monotonic() - last_beat >= 1.0:
                await sync_to_async(_standby_beat)(engine_id, plan, "STANDBY")
                last_beat = time.monotonic()
            if await asyncio.to_thread(lock.acquire):
                message = f"taking over account {settings.QUANTHUB_ACCOUNT}: the engine lock is ours"
                log.warning(message, extra={"engine": engine_id})
                self.stdout.write(message)
                self.stdout.flush()
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), STANDBY_POLL_S)
        return False

    def _serve(self, plan, lock, host: str, port: int) -> None:
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server, twisted_loop
        from twisted.internet import reactor

        from quanthub.asgi import application

        self.stdout.write(
            f"Serving Quant Hub on http://{host}:{port}/ with the engine on the {plan['feed']} feed "
            f"and the {plan['broker']} broker (speed {plan['speed']})."
        )

        def start_engine():
            task = asyncio.ensure_future(self._run(plan, lock), loop=twisted_loop)

            def done(t):
                if not t.cancelled() and t.exception():
                    log.error("engine ended with an error", exc_info=t.exception())
                if self.signalled and reactor.running:
                    reactor.stop()  # SIGTERM/SIGINT went to the engine: leave once it has stopped

            task.add_done_callback(done)

        reactor.callWhenRunning(start_engine)
        Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=True,
        ).run()
