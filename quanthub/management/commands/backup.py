"""manage.py backup [--no-upload] [--keep N]: a checksummed backup of the database now."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from quanthub.backup import BackupError, backup


class Command(BaseCommand):
    help = "Back up the database (pg_dump custom format, or SQLite's online backup) into QUANTHUB_BACKUP_DIR."

    def add_arguments(self, parser):
        parser.add_argument("--no-upload", action="store_true", help="Do not copy it to S3 even if configured.")
        parser.add_argument("--keep", type=int, help="Keep this many newest backups (default QUANTHUB_BACKUP_KEEP).")

    def handle(self, *args, **options):
        if options["keep"] is not None and options["keep"] < 1:
            raise CommandError("--keep must be at least 1")
        try:
            result = backup(upload=not options["no_upload"], keep=options["keep"])
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        where = f"; uploaded as {result.s3_key}" if result.s3_key else ""
        self.stdout.write(
            f"Backup {result.path} ({result.size:,} bytes, sha256 {result.sha256[:16]}…) "
            f"in {result.seconds:.2f} s{where}"
        )
