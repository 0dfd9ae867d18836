"""manage.py record_feed [--feed sim|dhan] [--minutes N] [--seed N] [--speed N|max] [--date D] [--scenario FILE]"""

from __future__ import annotations

import asyncio
import datetime as dt

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from marketdata.feeds import FEEDS, build_feed
from marketdata.feeds.base import ChainSnapshot
from marketdata.management.commands._feedargs import parse_date, parse_speed
from marketdata.scenarios import ScenarioError
from marketdata.storage import SnapshotWriter
from quanthub.clock import IST, SESSION_OPEN, RealClock, SimulatedClock


class Command(BaseCommand):
    help = "Record the configured feed into the raw tables (and minute bars), for replay and backtests."

    def add_arguments(self, parser):
        parser.add_argument("--feed", choices=[f for f in FEEDS if f != "replay"], default=None)
        parser.add_argument("--minutes", type=int, default=5, help="How many minutes of market time to record.")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument("--speed", default="max", help="N× real time, or max (simulator only).")
        parser.add_argument("--date", help="Trading day for the simulator (default: today).")
        parser.add_argument("--scenario", default="default", help="Simulator scenario file, 'default' or 'none'.")

    def handle(self, *args, **options):
        feed_name = options["feed"] or ("sim" if settings.QUANTHUB_FEED == "replay" else settings.QUANTHUB_FEED)
        if options["minutes"] <= 0:
            raise CommandError(f"--minutes must be positive, got {options['minutes']}")
        speed = parse_speed(options["speed"])
        day = parse_date(options["date"]) if options["date"] else RealClock().today()
        if feed_name == "sim":
            clock = SimulatedClock(dt.datetime.combine(day, SESSION_OPEN, tzinfo=IST))
            end = (dt.datetime.combine(day, SESSION_OPEN) + dt.timedelta(minutes=options["minutes"])).time()
            extra = {
                "trading_day": day,
                "end_time": end,
                "scenario": None if options["scenario"] == "none" else options["scenario"],
            }
        else:
            clock, extra = RealClock(), {}
        try:
            feed = build_feed(
                feed_name, clock=clock, seed=options["seed"] or settings.QUANTHUB_SEED, speed=speed, **extra
            )
        except (ValueError, ScenarioError) as exc:
            raise CommandError(str(exc)) from None
        stats = asyncio.run(self._record(feed, clock, options["minutes"]))
        self.stdout.write(
            f"Recorded {stats['chains']} option-chain snapshots and {stats['ticks']} LTP ticks "
            f"({stats['rows']} rows) from the {feed_name} feed, {stats['first']} to {stats['last']}."
        )

    async def _record(self, feed, clock, minutes: int) -> dict:
        writer = SnapshotWriter()
        stats = {"chains": 0, "ticks": 0, "rows": 0, "first": None, "last": None}
        deadline = clock.now() + dt.timedelta(minutes=minutes)
        async for item in feed:
            writer.add(item)
            stats["chains" if isinstance(item, ChainSnapshot) else "ticks"] += 1
            stats["first"] = stats["first"] or item.received_at
            stats["last"] = item.received_at
            if writer.pending >= 20_000:
                stats["rows"] += await sync_to_async(writer.flush)()
            if item.received_at >= deadline:
                break
        await feed.close()
        stats["rows"] += await sync_to_async(writer.flush)(close_bars=True)
        return stats
