"""manage.py verify_audit [--from DATE] [--to DATE] [--file EXPORT] [--workers N]"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import CheckpointError
from audit.export import read_export
from audit.verify import verify, verify_rows


def _date(value: str | None, flag: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{flag} takes YYYY-MM-DD, got {value!r}") from None


class Command(BaseCommand):
    help = (
        "Verify the audit hash chain, its head and the latest signed checkpoint; prints the first broken "
        "link and exits 1, else the count verified."
    )

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="date_from")
        parser.add_argument("--to", dest="date_to")
        parser.add_argument("--file", help="Verify an export (CSV or JSONL) instead of the database.")
        parser.add_argument(
            "--workers",
            type=int,
            default=settings.AUDIT_VERIFY_WORKERS,
            help="Processes to split the chain across (default AUDIT_VERIFY_WORKERS, every core).",
        )

    def handle(self, *args, **options):
        if options["file"]:
            rows = list(read_export(options["file"]))
            if not rows:
                raise CommandError(f"{options['file']} holds no records")
            first = rows[0]
            result = verify_rows(rows, key=settings.AUDIT_HMAC_KEY, prev_hash=first[6], prev_seq=first[0] - 1)
        else:
            try:
                result = verify(
                    _date(options["date_from"], "--from"),
                    _date(options["date_to"], "--to"),
                    workers=max(1, options["workers"]),
                )
            except CheckpointError as exc:
                self.stderr.write(f"CHECKPOINTS UNUSABLE: {exc}")
                raise SystemExit(2) from None
        if not result.ok:
            self.stderr.write(
                f"BROKEN at sequence {result.broken_seq}: {result.problem} "
                f"({result.verified} records verified before it)"
            )
            raise SystemExit(1)
        span = f" (#{result.first_seq}–#{result.last_seq})" if result.verified else ""
        against = f"; the latest checkpoint (#{result.checkpoint_seq}) holds" if result.checkpoint_seq else ""
        self.stdout.write(f"OK: {result.verified} audit records verified{span}{against}.")
