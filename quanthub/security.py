"""Security headers Django does not set itself: Content-Security-Policy and
Permissions-Policy (HSTS, nosniff, Referrer-Policy, COOP and X-Frame-Options
come from SecurityMiddleware and XFrameOptionsMiddleware).

The policy allows only our own origin: no inline scripts or styles, no
``eval``, no third-party hosts. Templates load htmx and its websocket
extension from django-htmx's static files and our own CSS/JS from
``static/``; the dashboards' websocket goes to the same host, so
``connect-src`` names exactly that host with the ws scheme matching the page
(``'self'`` covers ws/wss only in newer browsers).

One relaxation, documented in docs/security.md: django-celery-beat's periodic
task form (``/admin/django_celery_beat/periodictask/…``) carries an inline
script that shows a crontab in words. Under that prefix only, inline scripts
are allowed; the rest of the admin runs under the strict policy (Django's own
admin pages load every script from a file).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import DisallowedHost
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, reverse

PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=()"


def _inline_script_prefixes() -> tuple[str, ...]:
    try:
        return (reverse("admin:django_celery_beat_periodictask_changelist"),)
    except NoReverseMatch:  # the app or the admin is not installed
        return ()


def content_security_policy(request: HttpRequest) -> str:
    script_src = "'self'"
    if request.path.startswith(_inline_script_prefixes()):
        script_src += " 'unsafe-inline'"
    connect_src = "'self'"
    try:
        host = request.get_host()
    except DisallowedHost:
        host = ""
    if host:
        connect_src += f" {'wss' if request.is_secure() else 'ws'}://{host}"
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {script_src}",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {connect_src}",
            "frame-ancestors 'none'",
            "base-uri 'self'",
            "form-action 'self'",
        ]
    )


class SecurityHeadersMiddleware:
    """Adds the headers to every response; runs natively under WSGI and ASGI
    (no thread hop for daphne)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponse | Awaitable[HttpResponse]:
        if self.is_async:
            return self._acall(request)
        return add_headers(request, self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        return add_headers(request, await self.get_response(request))


def add_headers(request: HttpRequest, response: HttpResponse) -> HttpResponse:
    response.headers.setdefault("Content-Security-Policy", content_security_policy(request))
    response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
    return response
