"""manage.py dhan_preflight [--json]: every line of the Dhan pre-flight, pass or fail with the reason.

Exit status 1 when any line fails. Never prints a token.
"""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from quanthub.dhan.preflight import gather


class Command(BaseCommand):
    help = "Check the Dhan account before a live session: token, static IP, data plan, kill switch, P&L exit, funds, master, clock."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="One JSON object instead of the table.")

    def handle(self, *args, **options):
        lines = gather()
        if options["json"]:
            self.stdout.write(
                json.dumps({"ok": all(line.ok for line in lines), "lines": [line.as_dict() for line in lines]})
            )
        else:
            width = max(len(line.name) for line in lines)
            for line in lines:
                self.stdout.write(f"{'PASS' if line.ok else 'FAIL'}  {line.name.ljust(width)}  {line.detail}")
        failed = [line.name for line in lines if not line.ok]
        if failed:
            raise CommandError(f"pre-flight failed: {', '.join(failed)}")
