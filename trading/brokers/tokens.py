"""Dhan access tokens: where a refreshed token lives, and how it is refreshed.

A token is a secret: it comes from the environment (DHAN_ACCESS_TOKEN or its
_FILE) and a refreshed one is written only to a file of mode 600
(DHAN_ACCESS_TOKEN_FILE, else var/dhan/access_token), never to the database
or a log. Refresh runs at 08:50 IST (Celery beat, or
``manage.py refresh_dhan_token``): renew the current token while it is still
valid, else log in again with PIN + TOTP. A failure raises an alert.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)


class TokenRefreshError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Refreshed:
    token: str
    method: str  # "renewed" | "totp"
    expiry: str


class TokenStore:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path or settings.DHAN_TOKEN_PATH)

    def read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""

    def write(self, token: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token)
        os.replace(tmp, self.path)


def current_token(store: TokenStore | None = None) -> str:
    """The freshest token we have: a refreshed one on disk, else the configured one."""
    return (store or TokenStore()).read() or settings.DHAN_ACCESS_TOKEN


def _token_from(response: dict) -> tuple[str, str]:
    data = response.get("data", response) if isinstance(response, dict) else {}
    token = data.get("accessToken") or data.get("token") or data.get("access_token") or ""
    return token, str(data.get("expiryTime") or data.get("tokenValidity") or "")


def refresh(store: TokenStore | None = None) -> Refreshed:
    """Renew while valid, else TOTP login. Raises TokenRefreshError with the reasons."""
    from dhanhq import DhanLogin  # lazy: the live broker's library is loaded only when used

    store = store or TokenStore()
    if not settings.DHAN_CLIENT_ID:
        raise TokenRefreshError("DHAN_CLIENT_ID is not set")
    login = DhanLogin(settings.DHAN_CLIENT_ID)
    problems = []
    token = current_token(store)
    if token:
        try:
            new, expiry = _token_from(login.renew_token(token))
            if new:
                store.write(new)
                return Refreshed(new, "renewed", expiry)
            problems.append("renewal answered without a token")
        except Exception as exc:  # dhanhq raises bare Exception with the response in it
            problems.append(f"renewal failed: {type(exc).__name__}")
    if settings.DHAN_TOTP_SECRET and settings.DHAN_PIN:
        import pyotp

        try:
            code = pyotp.TOTP(settings.DHAN_TOTP_SECRET).now()
        except ValueError as exc:  # a malformed secret; pyotp's message does not contain it
            raise TokenRefreshError(f"{'; '.join(problems)}; DHAN_TOTP_SECRET is not usable: {exc}") from None
        try:
            new, expiry = _token_from(login.generate_token(settings.DHAN_PIN, code))
            if new:
                store.write(new)
                return Refreshed(new, "totp", expiry)
            problems.append("TOTP login answered without a token")
        except Exception as exc:
            problems.append(f"TOTP login failed: {type(exc).__name__}")
    else:
        problems.append("no DHAN_TOTP_SECRET and DHAN_PIN for a fresh login")
    raise TokenRefreshError("; ".join(problems))


def refresh_or_alert(store: TokenStore | None = None) -> Refreshed:
    try:
        result = refresh(store)
    except TokenRefreshError as exc:
        from trading.alerts import raise_alert

        raise_alert("CRITICAL", "token", "Dhan token refresh failed", str(exc))
        log.error("dhan token refresh failed", extra={"reason": str(exc)})
        raise
    log.info("dhan token refreshed", extra={"method": result.method, "expiry": result.expiry})
    return result
