"""manage.py import_chain_csv PATH: import option chains (format in marketdata/csvimport.py and the docs)."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import IntegrityError

from marketdata.csvimport import ChainCsvError, import_csv


class Command(BaseCommand):
    help = "Import option-chain snapshots from CSV; a bad file is refused whole with row and column."

    def add_arguments(self, parser):
        parser.add_argument("path")

    def handle(self, *args, **options):
        try:
            snapshots, rows = import_csv(Path(options["path"]))
        except ChainCsvError as exc:
            raise CommandError(str(exc)) from None
        except IntegrityError as exc:
            raise CommandError(
                f"Some snapshots are already stored (same time and contract); nothing imported: {exc}"
            ) from None
        self.stdout.write(f"Imported {snapshots} snapshots ({rows} contract rows) from {options['path']}.")
