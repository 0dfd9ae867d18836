"""manage.py audit_checkpoint [--reason close]: a signed checkpoint of the chain as it stands."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import write_head
from audit.models import AuditChainHead


class Command(BaseCommand):
    help = "Write a signed checkpoint of the audit chain head outside the database (file and alert sinks)."

    def add_arguments(self, parser):
        parser.add_argument("--reason", default="manual", help="Recorded in the checkpoint (default: manual).")

    def handle(self, *args, **options):
        if not AuditChainHead.objects.filter(id=1, seq__gt=0).exists():
            self.stdout.write("The audit chain is empty: nothing to checkpoint.")
            return
        checkpoint = write_head(reason=options["reason"][:40])
        if checkpoint is None:
            raise CommandError("The checkpoint could not be written (see the log).")
        self.stdout.write(f"Checkpoint #{checkpoint.seq} written at {checkpoint.at}.")
