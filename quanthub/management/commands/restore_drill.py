"""manage.py restore_drill [--file PATH]: restore the latest backup into a scratch
database, verify its audit chain and dry-run a reconciliation against it, and
print the measured restore time. Exit 1 when the restored chain does not verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from quanthub.backup import BackupError, _pg_env, backups, database_url, download_latest_from_s3, restore


def check_restored() -> dict:
    """Run against the restored database (a child process with its DATABASE_URL)."""
    from audit.verify import verify
    from marketdata.book import QuoteBook
    from trading.brokers import build_broker
    from trading.orders.reconcile import reconcile
    from trading.orders.root import account_clock

    result = verify()
    account = settings.QUANTHUB_ACCOUNT
    clock = account_clock(account)  # the time line the account's engine wrote on (simulated in the demo)
    broker = build_broker(settings.QUANTHUB_BROKER, account=account, clock=clock, book=QuoteBook())
    # A dry run: the breaks it would record are counted, then rolled back.
    with transaction.atomic():
        recon = async_to_sync(reconcile)(broker, account=account, clock=clock)
        transaction.set_rollback(True)
    return {
        "verify_ok": result.ok,
        "verified": result.verified,
        "problem": result.problem,
        "reconcile_breaks": len(recon.breaks),
        "break_kinds": sorted({b.kind for b in recon.breaks}),
    }


class Command(BaseCommand):
    help = "Restore the latest backup into a scratch database, verify it, and report the restore time."

    def add_arguments(self, parser):
        parser.add_argument("--file", help="Restore this backup instead of the newest in QUANTHUB_BACKUP_DIR.")
        parser.add_argument("--scratch", help="Scratch database name (PostgreSQL) or file (SQLite).")
        parser.add_argument("--check-only", action="store_true", help="(internal) check the current database")

    def handle(self, *args, **options):
        if options["check_only"]:
            self.stdout.write(json.dumps(check_restored()))
            return
        path = Path(options["file"]) if options["file"] else next(iter(backups()), None)
        if path is None and settings.QUANTHUB_BACKUP_S3_BUCKET:
            path = download_latest_from_s3()
        if path is None:
            raise CommandError(f"No backup in {settings.QUANTHUB_BACKUP_DIR} (run manage.py backup first)")
        try:
            db, seconds = restore(path, scratch=options["scratch"])
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        env = {**_pg_env(db), "DATABASE_URL": database_url(db)}
        env.pop("REDIS_URL", None)  # the drill must not publish to the live dashboards
        done = subprocess.run(  # noqa: S603
            [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "restore_drill", "--check-only"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode:
            raise CommandError(f"checking the restored database failed: {done.stderr.strip()[-800:]}")
        report = json.loads(done.stdout.strip().splitlines()[-1])
        self.stdout.write(f"Restored {path.name} into {db['NAME']} in {seconds:.2f} s")
        verdict = "OK" if report["verify_ok"] else f"BROKEN ({report['problem']})"
        self.stdout.write(f"Audit chain: {verdict}, {report['verified']} records verified")
        kinds = ", ".join(report["break_kinds"]) or "none"
        self.stdout.write(f"Reconciliation dry run: {report['reconcile_breaks']} break(s) ({kinds})")
        self.stdout.write(f"restore_s={seconds:.3f}")
        if not report["verify_ok"]:
            raise SystemExit(1)
