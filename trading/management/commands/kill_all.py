"""manage.py kill_all [--actor NAME] [--reason TEXT] [--account NAME] [--timeout S]: get flat now.

Handed to the engine holding the account's lock when one runs (it takes it
within a second); worked here, standalone, when none takes it within two
seconds. Prints the result built from the actual order and position states;
exits 1 when not flat.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit import actors
from trading.orders.requests import request_kill_all


class Command(BaseCommand):
    help = "HALT, cancel open orders, exit every position, and when flat activate the broker's kill switch."

    def add_arguments(self, parser):
        parser.add_argument(
            "--actor", default=None, help="Who is pressing it: recorded as cli:NAME (default: the OS user)."
        )
        parser.add_argument("--reason", default="manage.py kill_all")
        parser.add_argument("--account", default="default")
        parser.add_argument("--timeout", type=float, default=15.0, help="Seconds to keep working towards flat.")

    def handle(self, *args, **options):
        name = options["actor"]
        actor = actors.cli() if not name else name if name.startswith(("cli:", "user:")) else f"cli:{name}"
        if not actors.is_valid(actor):
            raise CommandError(f"--actor {options['actor']!r}: a name without spaces or colons, like $USER")
        result = request_kill_all(actor, options["reason"], options["account"], deadline_s=options["timeout"])
        self.stdout.write(f"Kill All ({result.get('worked_by') or 'nobody'}): {describe(result)}")
        for leg in result.get("detail", []):
            if leg.get("open") or leg.get("why"):
                self.stdout.write(f"  {leg['symbol']}: open {leg['open']:+d}; {'; '.join(leg['why']) or 'working'}")
        for error in result.get("errors", []):
            self.stderr.write(f"  {error}")
        if not result.get("flat"):
            raise SystemExit(1)


def describe(result: dict) -> str:
    """One line from a result dict (``FlattenResult.as_dict``)."""
    head = "FLAT" if result.get("flat") else "NOT FLAT"
    text = (
        f"{head}: {result.get('legs', 0)} legs, {result.get('sent', 0)} exits sent, {result.get('filled', 0)} filled, "
        f"{result.get('rejected', 0)} rejected, {result.get('cancelled', 0)} orders cancelled"
    )
    if result.get("flat_s") is not None:
        text += f"; flat in {result['flat_s']}s"
    if result.get("still_open"):
        text += f"; still open: {', '.join(result['still_open'])}"
    if result.get("kind", "KILL_ALL") == "KILL_ALL" and result.get("flat"):
        text += "; broker kill switch " + ("on" if result.get("kill_switch") else "NOT on")
    return text
