"""manage.py load_instruments PATH [--underlying NIFTY ...] [--freeze NIFTY=1800 ...] [--synthetic]"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from marketdata.master import DEFAULT_UNDERLYINGS, MasterError, load


def _freeze(value: str) -> tuple[str, int]:
    symbol, _, quantity = value.partition("=")
    if not symbol or not quantity.isdigit() or int(quantity) <= 0:
        raise CommandError(f"--freeze takes SYMBOL=QUANTITY with a positive whole quantity, got {value!r}")
    return symbol.upper(), int(quantity)


class Command(BaseCommand):
    help = "Load instruments from a Dhan scrip-master CSV; a malformed file is refused whole (row and column)."

    def add_arguments(self, parser):
        parser.add_argument("path", nargs="?", help="Dhan scrip-master CSV (api-scrip-master.csv format).")
        parser.add_argument("--underlying", action="append", help="Underlyings to load (default NIFTY, BANKNIFTY).")
        parser.add_argument(
            "--freeze", action="append", default=[], help="Freeze quantity per underlying, e.g. NIFTY=1800."
        )
        parser.add_argument(
            "--synthetic", action="store_true", help="Write and load the simulator's synthetic master for today."
        )

    def handle(self, *args, **options):
        if options["synthetic"]:
            from marketdata.demo import write_synthetic_master

            path = write_synthetic_master()
        elif options["path"]:
            path = Path(options["path"])
        else:
            raise CommandError("Give the path of a scrip-master CSV, or --synthetic.")
        freeze = dict(_freeze(value) for value in options["freeze"])
        try:
            result = load(path, underlyings=options["underlying"] or DEFAULT_UNDERLYINGS, freeze=freeze)
        except MasterError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Loaded {', '.join(result.underlyings) or 'nothing'} from {path}: {result.created} created, "
            f"{result.updated} updated, {result.deactivated} deactivated, {result.skipped} rows skipped "
            f"(data dir {settings.VAR_DIR})."
        )
