"""manage.py refresh_dhan_token: renew the Dhan access token (or log in with TOTP); alert on failure."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from quanthub.dhan.tokens import TokenRefreshError, TokenStore, refresh_or_alert


class Command(BaseCommand):
    help = "Renew the Dhan access token while valid, else log in with PIN + TOTP. Never prints the token."

    def handle(self, *args, **options):
        store = TokenStore()
        try:
            result = refresh_or_alert(store)
        except TokenRefreshError as exc:
            raise CommandError(f"Dhan token refresh failed (an alert was raised): {exc}") from None
        how = "renewed" if result.method == "renewed" else "obtained by PIN + TOTP login"
        self.stdout.write(f"Dhan token {how}; valid until {result.expiry or 'unknown'}; stored in {store.path}.")
