"""manage.py replay --date YYYY-MM-DD [--speed N|max]: stream a stored day through the feed interface."""

from __future__ import annotations

import asyncio
import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from marketdata.feeds.base import ChainSnapshot
from marketdata.feeds.replay import ReplayFeed
from marketdata.management.commands._feedargs import parse_date, parse_speed
from marketdata.models import ChainQuote
from marketdata.validation import ChainValidator, FeedHealth
from quanthub.clock import IST, SimulatedClock


class Command(BaseCommand):
    help = "Replay a recorded trading day through the feed interface, validating it as the engine would."

    def add_arguments(self, parser):
        parser.add_argument("--date", required=True)
        parser.add_argument("--speed", default="max", help="N× real time, or max.")

    def handle(self, *args, **options):
        day = parse_date(options["date"])
        speed = parse_speed(options["speed"])
        start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
        if not ChainQuote.objects.filter(received_at__gte=start, received_at__lt=start + dt.timedelta(days=1)).exists():
            raise CommandError(f"No recorded data for {day}; record some with manage.py record_feed --date {day}.")
        clock = SimulatedClock(start)
        stats = asyncio.run(self._replay(ReplayFeed(date=day, clock=clock, speed=speed), clock))
        self.stdout.write(
            f"Replayed {stats['chains']} option-chain snapshots and {stats['ticks']} LTP ticks, "
            f"{stats['first']:%H:%M:%S} to {stats['last']:%H:%M:%S} IST; rejected by validation: "
            f"{dict(stats['rejected']) or 'nothing'}."
        )

    async def _replay(self, feed, clock) -> dict:
        validator, health = ChainValidator(), FeedHealth()
        stats = {"chains": 0, "ticks": 0, "first": None, "last": None}
        async for item in feed:
            if isinstance(item, ChainSnapshot):
                health.observe_chain(item, clock.now(), validator.validate(item, clock.now()))
                stats["chains"] += 1
            else:
                health.observe_ltp(item, clock.now(), validator.validate_ltp(item, clock.now()))
                stats["ticks"] += 1
            stats["first"] = stats["first"] or item.received_at.astimezone(IST)
            stats["last"] = item.received_at.astimezone(IST)
        stats["rejected"] = validator.counts
        return stats
