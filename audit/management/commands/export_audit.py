"""manage.py export_audit --from DATE --to DATE --format csv|jsonl [--output PATH]"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from audit.export import FORMATS, stream
from audit.management.commands.verify_audit import _date


class Command(BaseCommand):
    help = "Export audit records for compliance (verifiable offline with verify_audit --file)."

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="date_from", required=True)
        parser.add_argument("--to", dest="date_to", required=True)
        parser.add_argument("--format", choices=FORMATS, default="jsonl")
        parser.add_argument("--output", help="File to write (default: standard output).")

    def handle(self, *args, **options):
        date_from, date_to = _date(options["date_from"], "--from"), _date(options["date_to"], "--to")
        if date_from > date_to:
            raise CommandError("--from must not be after --to")
        chunks = stream(options["format"], date_from, date_to)
        if options["output"]:
            with open(options["output"], "w", encoding="utf-8", newline="") as handle:
                for chunk in chunks:
                    handle.write(chunk)
        else:
            for chunk in chunks:
                sys.stdout.write(chunk)
