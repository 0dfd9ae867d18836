"""Create one demo user per role, with generated passwords printed once, and
the synthetic instrument master. Safe to run again: existing users keep
their passwords unless --reset-passwords is given."""

from __future__ import annotations

import getpass
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from quanthub.roles import COMPLIANCE, RISK_MANAGER, TRADER
from trading import services
from trading.models import Strategy

DEMO_USERS = (("trader", TRADER), ("risk", RISK_MANAGER), ("compliance", COMPLIANCE))


class Command(BaseCommand):
    help = "Create demo users (one per role) and demo instruments; prints the generated passwords once."

    def add_arguments(self, parser):
        parser.add_argument("--reset-passwords", action="store_true", help="Give existing demo users new passwords.")
        parser.add_argument("--no-instruments", action="store_true", help="Skip the synthetic instrument master.")
        parser.add_argument("--enable-strategy", action="store_true", help="Enable the Volume-OI strategy.")
        parser.add_argument(
            "--credentials-file", help="Also write the logins to this file (mode 600), for scripts and browser tests."
        )

    def handle(self, *args, **options):
        User = get_user_model()
        lines = []
        with transaction.atomic():
            for username, role in DEMO_USERS:
                user, created = User.objects.get_or_create(username=username, defaults={"is_staff": True})
                if created or options["reset_passwords"]:
                    password = secrets.token_urlsafe(12)
                    user.set_password(password)
                    user.is_staff = True
                    user.save()
                    user.groups.set([Group.objects.get(name=role)])
                    lines.append(f"  {role:<13} {username:<11} {password}")
                else:
                    lines.append(f"  {role:<13} {username:<11} (unchanged; --reset-passwords for a new one)")
            if options["enable_strategy"]:
                strategy = Strategy.objects.get(key="vol_oi")
                services.set_strategy_enabled(strategy, True, actor=f"cli:{getpass.getuser()}")
        if not options["no_instruments"]:
            from marketdata.demo import ensure_demo_instruments

            count = ensure_demo_instruments()
            self.stdout.write(f"Demo instruments ready: {count}")
        if options["credentials_file"]:
            import os

            path = options["credentials_file"]
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("\n".join(lines) + "\n")
        self.stdout.write("Demo logins (role, username, password):")
        for line in lines:
            self.stdout.write(line)
