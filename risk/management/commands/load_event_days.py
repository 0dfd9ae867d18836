"""Load next year's event days (RBI, Budget, US CPI, NSE holidays) from a CSV or JSON file.

CSV: a header row with ``date,kind[,action][,note][,source][,provisional]``.
JSON: a list of objects with the same keys. A day already in the calendar
(same date and kind) is updated; every change is audited. Nothing is written
unless every row is valid.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from audit import actors
from audit.chain import append as audit_append
from risk.calendars import CalendarError, parse_rows
from risk.models import EventDay
from trading.timeline import account_now


class Command(BaseCommand):
    help = "Load event days (date, kind, action, note, source, provisional) from a CSV or JSON file."

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("--source", default="", help="Source recorded on rows that do not name one")

    def handle(self, *args, file: str, source: str, **options):
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Cannot read {path}: {exc.strerror}") from None
        try:
            if path.suffix.lower() == ".json":
                records = json.loads(text)
                if not isinstance(records, list):
                    raise CommandError("A JSON calendar is a list of objects")
            else:
                records = list(csv.DictReader(text.splitlines()))
        except json.JSONDecodeError as exc:
            raise CommandError(f"{path} is not valid JSON: line {exc.lineno}: {exc.msg}") from None
        try:
            rows = parse_rows(records, default_source=source or path.name)
        except CalendarError as exc:
            raise CommandError(str(exc)) from None
        created = updated = 0
        with transaction.atomic():
            for row in rows:
                _, was_created = EventDay.objects.update_or_create(
                    date=row["date"], kind=row["kind"], defaults={k: row[k] for k in row if k not in ("date", "kind")}
                )
                created += was_created
                updated += not was_created
            audit_append(
                "risk.event_days_loaded",
                actor=actors.cli(),
                subject="event_days",
                payload={"file": path.name, "created": created, "updated": updated},
                at=account_now(settings.QUANTHUB_ACCOUNT),
            )
        self.stdout.write(f"{created} event days added, {updated} updated from {path.name}")
