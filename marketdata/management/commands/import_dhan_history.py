"""manage.py import_dhan_history --underlying NIFTY --from YYYY-MM-DD --to YYYY-MM-DD [--strikes 10]
[--rate 4] [--expiry-weekday N]

Expired-options minute bars (ATM±strikes, calls and puts) and the index's and
futures' minute candles with OI, from Dhan's data APIs through dhanhq, into the
minute-bar tier with their source. Paced within Dhan's limits, resumable and
idempotent: a re-run skips every range already fetched and stores nothing twice.
"""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from marketdata import history
from marketdata.models import Underlying
from quanthub.progress import ProgressBar


def _date(flag: str, value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{flag} takes YYYY-MM-DD, got {value!r}") from None


class Command(BaseCommand):
    help = "Import Dhan expired-options minute data and index/futures minute candles into the minute-bar tier."

    def add_arguments(self, parser):
        parser.add_argument("--underlying", required=True, help="Underlying symbol, e.g. NIFTY.")
        parser.add_argument("--from", dest="date_from", required=True, help="First day (YYYY-MM-DD).")
        parser.add_argument("--to", dest="date_to", required=True, help="Last day, inclusive (YYYY-MM-DD).")
        parser.add_argument(
            "--strikes", type=int, default=history.MAX_STRIKES, help="Strikes each side of ATM, 0–10 (default 10)."
        )
        parser.add_argument(
            "--rate", type=float, default=4.0, help="Requests per second, at most Dhan's 5 (default 4)."
        )
        parser.add_argument(
            "--expiry-weekday",
            type=int,
            default=None,
            help="Weekday of the expiries in this range (0 = Monday) when it differs from today's rule.",
        )

    def handle(self, *args, **options):
        date_from, date_to = _date("--from", options["date_from"]), _date("--to", options["date_to"])
        if date_from > date_to:
            raise CommandError(f"--from {date_from} is after --to {date_to}")
        if date_to >= dt.date.today():  # noqa: DTZ011 (a calendar bound, not market logic)
            raise CommandError("--to must be a past day: Dhan's expired-options data covers expired contracts")
        underlying = Underlying.objects.filter(symbol=options["underlying"].upper()).first()
        if underlying is None or not underlying.security_id:
            raise CommandError(f"--underlying {options['underlying']}: not in the instrument master")
        weekday = options["expiry_weekday"]
        if weekday is not None and not 0 <= weekday <= 6:
            raise CommandError("--expiry-weekday takes 0 (Monday) … 6 (Sunday)")
        try:
            pacer = history.Pacer(options["rate"])
            importer = history.HistoryImporter(
                underlying,
                client=history.dhan_data_client(),
                pacer=pacer,
                strikes=options["strikes"],
                expiry_weekday=weekday,
            )
        except (ValueError, history.HistoryError) as exc:
            raise CommandError(str(exc)) from None
        plan = importer.plan(date_from, date_to)
        self.stdout.write(
            f"Importing {underlying.symbol} {date_from} → {date_to}: {len(plan)} request range(s), "
            f"at most {options['rate']:g} requests/s."
        )
        bar = ProgressBar(len(plan), stream=self.stdout, label="history")
        try:
            summary = importer.run(date_from, date_to, on_step=lambda request: bar.update(advance=1))
        except history.HistoryError as exc:
            raise CommandError(f"{exc} — ranges fetched so far are kept; re-run to resume") from None
        bar.finish()
        self.stdout.write(
            f"Done: {summary.requests} request(s), {summary.skipped} range(s) already imported, "
            f"{summary.empty} empty, {summary.bars_written} new bar(s) of {summary.bars_seen} received, "
            f"{summary.contracts} new contract(s)."
        )
        if summary.failed:
            self.stdout.write(
                self.style.WARNING(
                    f"{len(summary.failed)} range(s) failed (re-run to retry): {', '.join(summary.failed[:10])}"
                )
            )
