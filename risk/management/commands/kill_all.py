"""manage.py kill_all [--actor NAME] [--reason TEXT] [--account NAME]: get flat now, engine or no engine."""

from __future__ import annotations

import getpass

from django.core.management.base import BaseCommand

from risk.killswitch import run_kill_all


class Command(BaseCommand):
    help = "HALT, cancel open orders, exit every position, and when flat activate the broker's kill switch."

    def add_arguments(self, parser):
        parser.add_argument("--actor", default=None, help="Who is pressing it (default: the OS user).")
        parser.add_argument("--reason", default="manage.py kill_all")
        parser.add_argument("--account", default="default")
        parser.add_argument("--timeout", type=float, default=15.0, help="Seconds to keep working towards flat.")

    def handle(self, *args, **options):
        actor = options["actor"] or f"cli:{getpass.getuser()}"
        summary = run_kill_all(actor, options["reason"], options["account"], timeout_s=options["timeout"])
        self.stdout.write(
            f"Kill All: {summary.legs} legs, {summary.sent} exits sent in {summary.sent_s}s, "
            f"{summary.filled} filled, {summary.cancelled} orders cancelled; "
            f"{'FLAT' if summary.flat else 'NOT FLAT'}"
            f"{f' in {summary.flat_s}s' if summary.flat else ''}; broker kill switch "
            f"{'on' if summary.kill_switch else 'off'}."
        )
        for error in summary.errors:
            self.stderr.write(f"  {error}")
        if not summary.flat:
            raise SystemExit(1)
