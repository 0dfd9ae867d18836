"""Dhan access tokens: where a refreshed token lives, and how it is refreshed.

A token is a secret: it comes from the environment (DHAN_ACCESS_TOKEN or its
_FILE) and a refreshed one is written only to a file of mode 600
(DHAN_ACCESS_TOKEN_FILE, else var/dhan/access_token), never to the database
or a log. Refresh runs at 08:50 IST (Celery beat, or
``manage.py refresh_dhan_token``): renew the current token while it is still
valid, else log in again with PIN + TOTP. A failure raises an alert.

The two login calls are made here, not through dhanhq's ``DhanLogin``: its
calls have no timeout (an 08:50 refresh could hang without an alert), and it
logs the exception of a failed TOTP login — whose URL carries the PIN and the
TOTP code in its query string. Ours time out after DHAN_HTTP_TIMEOUT_S and
report only the kind of failure and Dhan's error code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from django.conf import settings

from quanthub.logging import register_secret

log = logging.getLogger(__name__)
_listeners: list[Callable[[str], None]] = []


class TokenRefreshError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Refreshed:
    token: str
    method: str  # "renewed" | "totp"
    expiry: str

    def __repr__(self) -> str:  # a Refreshed in a traceback or a log never shows the token
        return f"Refreshed(method={self.method!r}, expiry={self.expiry!r})"


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
        register_secret(token)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token)
        os.replace(tmp, self.path)


def current_token(store: TokenStore | None = None) -> str:
    """The freshest token we have: a refreshed one on disk, else the configured one."""
    token = (store or TokenStore()).read() or settings.DHAN_ACCESS_TOKEN
    register_secret(token)
    return token


def on_renewal(listener: Callable[[str], None]) -> Callable[[], None]:
    """Call ``listener(new_token)`` after a renewal in this process; returns the unsubscribe.

    The streams also notice a renewal written by another process (Celery beat)
    by reading ``current_token()`` again at their heartbeat."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def _notify(token: str) -> None:
    for listener in list(_listeners):
        try:
            listener(token)
        except Exception:  # one listener's bug never stops the refresh
            log.exception("token renewal listener failed")


def _token_from(body) -> tuple[str, str]:
    data = body.get("data", body) if isinstance(body, dict) else {}
    if not isinstance(data, dict):
        return "", ""
    token = data.get("accessToken") or data.get("token") or data.get("access_token") or ""
    return token, str(data.get("expiryTime") or data.get("tokenValidity") or "")


def _why(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    code = body.get("errorCode") if isinstance(body, dict) else None
    message = body.get("errorMessage") if isinstance(body, dict) else None
    return f"HTTP {response.status_code} {code or ''} {message or ''}".strip()


def _call(method: str, url: str, **kwargs) -> tuple[str, str, str]:
    """(token, expiry, problem): the problem names the failure, never the request."""
    try:
        response = requests.request(method, url, timeout=float(settings.DHAN_HTTP_TIMEOUT_S), **kwargs)
    except requests.RequestException as exc:
        return "", "", type(exc).__name__
    if response.status_code >= 400:
        return "", "", _why(response)
    try:
        token, expiry = _token_from(response.json())
    except ValueError:
        return "", "", f"HTTP {response.status_code}: not JSON"
    return token, expiry, "" if token else "answered without a token"


def renew(token: str) -> tuple[str, str, str]:
    return _call(
        "GET",
        f"{settings.DHAN_API_BASE_URL.rstrip('/')}/RenewToken",
        headers={"access-token": token, "dhanClientId": settings.DHAN_CLIENT_ID},
    )


def totp_login(pin: str, code: str) -> tuple[str, str, str]:
    return _call(
        "POST",
        f"{settings.DHAN_AUTH_BASE_URL.rstrip('/')}/app/generateAccessToken",
        params={"dhanClientId": settings.DHAN_CLIENT_ID, "pin": pin, "totp": code},
    )


def refresh(store: TokenStore | None = None) -> Refreshed:
    """Renew while valid, else TOTP login. Raises TokenRefreshError with the reasons."""
    store = store or TokenStore()
    if not settings.DHAN_CLIENT_ID:
        raise TokenRefreshError("DHAN_CLIENT_ID is not set")
    problems = []
    token = current_token(store)
    if token:
        new, expiry, problem = renew(token)
        if new:
            store.write(new)
            _notify(new)
            return Refreshed(new, "renewed", expiry)
        problems.append(f"renewal failed: {problem}")
    if settings.DHAN_TOTP_SECRET and settings.DHAN_PIN:
        import pyotp

        try:
            code = pyotp.TOTP(settings.DHAN_TOTP_SECRET).now()
        except (ValueError, TypeError) as exc:  # a malformed secret; pyotp's message does not contain it
            raise TokenRefreshError(
                f"{'; '.join(problems)}; DHAN_TOTP_SECRET is not usable: {type(exc).__name__}"
            ) from None
        new, expiry, problem = totp_login(settings.DHAN_PIN, code)
        if new:
            store.write(new)
            _notify(new)
            return Refreshed(new, "totp", expiry)
        problems.append(f"TOTP login failed: {problem}")
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
