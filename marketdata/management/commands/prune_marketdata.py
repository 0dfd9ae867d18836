"""manage.py prune_marketdata [--dry-run]: apply the retention tiers now."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from marketdata.retention import BAR_DAYS, METRIC_DAYS, RAW_DAYS, prune
from quanthub.clock import RealClock


class Command(BaseCommand):
    help = f"Delete market data past retention: raw {RAW_DAYS} days, minute bars {BAR_DAYS}, metrics {METRIC_DAYS}."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Count what would go; delete nothing.")

    def handle(self, *args, **options):
        counts = prune(RealClock().now(), dry_run=options["dry_run"])
        verb = "Would remove" if options["dry_run"] else "Removed"
        self.stdout.write(f"{verb}: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
