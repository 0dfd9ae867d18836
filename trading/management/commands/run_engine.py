"""manage.py run_engine [--broker paper|dhan] [--feed sim|replay|dhan] [--speed N|max] [--serve]
[--seed N] [--port N] [--host H] [--date YYYY-MM-DD] [--scenario FILE|default|none] [--no-standby]
[--metrics-port N] [--metrics-host H] [--from-open]

Every flag is checked before anything starts. With --serve the web app is
served from the same process and event loop (daphne), on the in-memory
channel layer: the embedded default the README's run command starts. There,
without REDIS_URL, the periodic jobs Celery beat would send run in a thread
of this process (``quanthub.scheduler``).

One engine trades an account at a time (``trading.engine.lock``). When
another engine holds the account's lock this one waits as a standby: it beats
STANDBY every second, tries the lock twice a second and, once it has it, starts
like any engine (OMS recovery and reconciliation first). ``--no-standby``
refuses to wait.

With ``--metrics-port`` (or ``ENGINE_METRICS_PORT``) the engine serves its own
Prometheus metrics on that port, behind ``METRICS_TOKEN`` (quanthub.metrics);
off when neither is set. A port already taken (a standby on the same host) is
logged and the engine trades on without it. At the end of the run a signed
audit checkpoint records the chain's close.

On the simulator, a restart on the same day (plain or a takeover) resumes the
session at the last stored market time with the market as it stood (spot,
VIX, chain, the scenario's events under way), never before the latest order
or fill (the engine's clock never runs backwards), and no scenario event
before that time fires again; ``--from-open`` starts the day over instead.

Nothing outside ends the command: a database that is not there yet is waited
for (one log line, back-off), a broker failing leaves the engine REDUCING.
Only an operator's stop or a lock another engine took ends it.
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

from audit import actors
from audit import checkpoints as audit_checkpoints
from marketdata.management.commands._feedargs import parse_date, parse_speed
from quanthub import metrics, scheduler
from trading.timeline import account_now

log = logging.getLogger(__name__)


STANDBY_POLL_S = 0.5  # a standby tries the lock this often: a takeover well within 10 s of a death


def _standby_beat(engine_id: str, plan, role: str) -> None:
    from django.db import Error as DatabaseError

    try:
        _write_standby_beat(engine_id, plan, role)
    except DatabaseError as exc:  # the database is away; the standby keeps trying the lock
        log.warning("standby heartbeat not written", extra={"error": type(exc).__name__})


def _write_standby_beat(engine_id: str, plan, role: str) -> None:
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


def _claim(account: str, engine_id: str) -> tuple[list[dt.datetime], dict | None]:
    """With the lock held no other engine trades the account: mark any row still
    saying ACTIVE (a killed engine's) STOPPED. Returns the latest engine-clock times
    the account reached — its engines' market time, and its orders and fills (a
    killed engine may have traded past its last heartbeat) — and the simulated
    market's state at the latest heartbeat: where a restart on the simulator
    carries on (``_build`` keeps the times of the day it trades)."""
    from django.db.models import Max

    from trading.models import EngineHeartbeat, Fill, Order

    Role = EngineHeartbeat.Role
    others = EngineHeartbeat.objects.filter(account=account).exclude(engine_id=engine_id)
    row = (
        others.filter(role__in=[Role.ACTIVE, Role.STOPPED], market_time__isnull=False)
        .order_by("-market_time")
        .values_list("market_time", "feed_state")
        .first()
    )
    times = [row[0]] if row else []
    times += Order.objects.filter(account=account).aggregate(a=Max("intent_at"), b=Max("committed_at")).values()
    times.append(Fill.objects.filter(order__account=account).aggregate(a=Max("filled_at"))["a"])
    others.filter(role=Role.ACTIVE).update(role=Role.STOPPED)
    return [t for t in times if t is not None], (row[1] or None if row else None)


async def _until_database(fn, stopping: asyncio.Event, what: str):
    """Run ``fn`` in the database thread until the database answers (bounded back-off)."""
    from asgiref.sync import sync_to_async
    from django.db import Error as DatabaseError

    from trading.engine.outages import close_connections

    delay, told = 0.5, False
    while True:
        try:
            return await sync_to_async(fn)()
        except DatabaseError as exc:
            if not told:
                log.error("database unreachable: waiting for it", extra={"step": what, "error": type(exc).__name__})
                told = True
            await sync_to_async(close_connections)()
            if stopping.is_set():
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            delay = min(delay * 2, 10.0)


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
            "--metrics-port",
            type=int,
            default=settings.ENGINE_METRICS_PORT,
            help="Serve the engine's Prometheus metrics on this port (default ENGINE_METRICS_PORT; off when unset).",
        )
        parser.add_argument("--metrics-host", default=settings.ENGINE_METRICS_HOST)
        parser.add_argument(
            "--from-open",
            action="store_true",
            help="On the simulator, start the day at the open even if it ran today already.",
        )
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
        metrics_port = options["metrics_port"]
        if metrics_port is not None and not 0 < metrics_port < 65536:
            raise CommandError(f"--metrics-port must be between 1 and 65535, got {metrics_port}")
        if metrics_port is not None and not settings.METRICS_TOKEN:
            raise CommandError("--metrics-port needs METRICS_TOKEN: the engine's metrics are not for anonymous eyes")
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
            "from_open": options["from_open"],
        }
        from trading.engine.lock import engine_lock

        account = settings.QUANTHUB_ACCOUNT
        lock = engine_lock(account)
        if not lock.acquire() and options["no_standby"]:
            raise CommandError(
                f"another engine holds account {account} ({lock.describe()}); not waiting as a standby (--no-standby)"
            )
        server = self._metrics_server(metrics_port, options["metrics_host"])
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
            if server is not None:
                server.shutdown()
            audit_checkpoints.write_head(reason="close")

    def _metrics_server(self, port: int | None, host: str):
        if port is None:
            return None
        try:
            server = metrics.serve(port, host, settings.METRICS_TOKEN)
        except OSError as exc:
            # Metrics are for watching; a port clash must not stop trading.
            log.error("engine metrics not served", extra={"port": port, "error": repr(exc)})
            return None
        self.stdout.write(f"Engine metrics on http://{host}:{server.server_address[1]}/metrics")
        self.stdout.flush()
        return server

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
            actor=actors.cli(),
            subject=f"account:{settings.QUANTHUB_ACCOUNT}",
            payload={"failed": [line.as_dict() for line in failed]},
            at=account_now(settings.QUANTHUB_ACCOUNT),
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

    def _build(self, plan, reached: list[dt.datetime] | None = None, feed_state: dict | None = None):
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
            clock = SimulatedClock(start - dt.timedelta(seconds=1))
        book = QuoteBook()
        feed = build_feed(plan["feed"], clock=clock, seed=plan["seed"], speed=plan["speed"], **feed_options)
        # Orders placed from the web tier carry wall-clock times: only this day's count.
        today = (
            [t.astimezone(IST) for t in reached or () if t.astimezone(IST).date() == day]
            if plan["feed"] == "sim"
            else []
        )
        resume_at = max(today, default=None)
        if resume_at is not None and not plan.get("from_open") and resume_at >= start:
            # A restart carries on with the session where the last engine left
            # it (the market as it stood), rather than trading its first minutes
            # a second time or sending the clock back behind its own orders.
            start = feed.resume(resume_at.replace(microsecond=0) + dt.timedelta(seconds=1), feed_state)
            clock.set(start - dt.timedelta(seconds=1))
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
        await _until_database(lambda: self._prepare(plan), stopping, "prepare")
        took_over = False
        if not lock.held:
            took_over = await self._standby(plan, lock, engine_id, stopping)
            if not took_over:
                await sync_to_async(_standby_beat)(engine_id, plan, "STOPPED")
                return None
        try:
            reached, feed_state = await _until_database(lambda: _claim(account, engine_id), stopping, "claim")
            engine = await _until_database(lambda: self._build(plan, reached, feed_state), stopping, "build")
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
        # The periodic jobs (backups, retention, training after the close, ...) run
        # in a thread of this process when there is no Celery beat (no REDIS_URL).
        jobs = scheduler.start_in_process()
        try:
            Server(
                application=application,
                endpoints=build_endpoint_description_strings(host=host, port=port),
                signal_handlers=True,
            ).run()
        finally:
            if jobs is not None:
                jobs.stop()
