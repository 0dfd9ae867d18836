"""manage.py train_anomaly [--date D] [--sessions N] [--underlying U ...]: train the
anomaly models now (the nightly task does the same after the close)."""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from marketdata.anomaly.training import train_underlying
from marketdata.models import Underlying
from quanthub.clock import RealClock


class Command(BaseCommand):
    help = "Train one Isolation Forest per underlying on the last N stored sessions up to --date."

    def add_arguments(self, parser):
        parser.add_argument("--date", help="Last session of the window, YYYY-MM-DD (default: today, IST)")
        parser.add_argument("--sessions", type=int, help="Sessions in the window (default QUANTHUB_ANOMALY_SESSIONS)")
        parser.add_argument("--underlying", action="append", help="Only this underlying (repeatable)")

    def handle(self, *args, **options):
        try:
            day = dt.date.fromisoformat(options["date"]) if options["date"] else RealClock().now().date()
        except ValueError:
            raise CommandError(f"--date must be YYYY-MM-DD, got {options['date']!r}") from None
        if options["sessions"] is not None and options["sessions"] < 1:
            raise CommandError("--sessions must be at least 1")
        symbols = options["underlying"] or list(
            Underlying.objects.filter(is_active=True).values_list("symbol", flat=True)
        )
        trained = 0
        for symbol in symbols:
            row = train_underlying(symbol, day, sessions=options["sessions"])
            if row is None:
                self.stdout.write(f"{symbol}: no stored sessions up to {day}; nothing trained")
                continue
            trained += 1
            q = row.score_quantiles
            self.stdout.write(
                f"{symbol}: version {row.pk} {'live' if row.live else 'recorded (a pinned version stays live)'}; "
                f"sessions {row.window_start}..{row.window_end} ({row.sessions}), {row.samples:,} snapshots, "
                f"p99 score {q['p99']:.3f}, {row.train_seconds:.1f} s"
            )
        if not trained:
            raise CommandError(f"No stored option chains up to {day}: nothing to train on")
