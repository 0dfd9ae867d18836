"""manage.py run_engine [--broker paper|dhan] [--feed sim|replay|dhan] [--speed N|max] [--serve]
[--seed N] [--port N] [--host H] [--date YYYY-MM-DD] [--scenario FILE|default|none]

Every flag is checked before anything starts. With --serve the web app is
served from the same process and event loop (daphne), on the in-memory
channel layer: the embedded default the README's run command starts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from marketdata.management.commands._feedargs import parse_date, parse_speed

log = logging.getLogger(__name__)


def last_weekday(day: dt.date) -> dt.date:
    while day.weekday() >= 5:
        day -= dt.timedelta(days=1)
    return day


class Command(BaseCommand):
    help = "Run the trading engine (and, with --serve, the web app in the same process)."

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
        plan = {
            "broker": broker,
            "feed": feed,
            "speed": speed,
            "day": day,
            "scenario": scenario,
            "seed": options["seed"] if options["seed"] is not None else settings.QUANTHUB_SEED,
        }
        if options["serve"]:
            self._serve(plan, options["host"], options["port"])
        else:
            stats = asyncio.run(self._run(plan))
            self.stdout.write(
                f"Engine finished: {stats.snapshots} snapshots, {stats.intents} intents, "
                f"{stats.orders} orders, {stats.refused} refused by the gate."
            )

    def _build(self, plan):
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
            clock = SimulatedClock(dt.datetime.combine(day, SESSION_OPEN, tzinfo=IST) - dt.timedelta(seconds=1))
            feed_options = {"trading_day": day, "date": day, "scenario": plan["scenario"]}
        book = QuoteBook()
        feed = build_feed(plan["feed"], clock=clock, seed=plan["seed"], speed=plan["speed"], **feed_options)
        broker = build_broker(
            plan["broker"], account=settings.QUANTHUB_ACCOUNT, clock=clock, book=book, seed=plan["seed"]
        )
        return Engine(
            feed=feed, broker=broker, clock=clock, book=book, account=settings.QUANTHUB_ACCOUNT, writer=SnapshotWriter()
        )

    async def _run(self, plan):
        from asgiref.sync import sync_to_async

        if plan["feed"] == "sim":
            from marketdata.demo import ensure_demo_instruments

            await sync_to_async(ensure_demo_instruments)(plan["day"] or last_weekday(dt.date.today()))  # noqa: DTZ011
        engine = await sync_to_async(self._build)(plan)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, engine.stop)
            except (NotImplementedError, RuntimeError):
                pass
        return await engine.run()

    def _serve(self, plan, host: str, port: int) -> None:
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server, twisted_loop
        from twisted.internet import reactor

        from quanthub.asgi import application

        self.stdout.write(
            f"Serving Quant Hub on http://{host}:{port}/ with the engine on the {plan['feed']} feed "
            f"and the {plan['broker']} broker (speed {plan['speed']})."
        )

        def start_engine():
            task = asyncio.ensure_future(self._run(plan), loop=twisted_loop)
            task.add_done_callback(
                lambda t: t.exception() and log.error("engine ended with an error", exc_info=t.exception())
            )

        reactor.callWhenRunning(start_engine)
        Server(
            application=application,
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=True,
        ).run()
