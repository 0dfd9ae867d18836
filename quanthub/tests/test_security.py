"""Security headers, the CSP staying compatible with our templates and the
admin, login throttling, CSRF on htmx posts, login-only pages and a clean
``check --deploy`` under production settings."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from axes.helpers import get_cool_off
from axes.models import AccessAttempt
from django.conf import settings
from django.db.models import F
from django.test import Client, override_settings
from django.urls import reverse

from quanthub.roles import TRADER

BASE_DIR = Path(__file__).resolve().parents[2]
PASSWORD = "a-long-test-password"
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws://testserver; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)


class InlineCode(HTMLParser):
    """Collects everything a strict CSP would block: inline scripts and
    styles, style attributes and event-handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        if tag == "script" and "src" not in names and names.get("type") != "application/json":
            self.found.append("<script> without src")
        if tag == "style":
            self.found.append("<style>")
        self.found += [f"{tag}[{name}]" for name in names if name == "style" or name.startswith("on")]


def inline_code(html: str) -> list[str]:
    parser = InlineCode()
    parser.feed(html)
    return parser.found


@pytest.fixture
def superuser(make_user):
    return make_user("root1", is_superuser=True)


# --- Headers ------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_sends_the_csp_and_permissions_policy_on_pages(client, trader):
    client.force_login(trader)
    for url in ("/", "/login/", reverse("admin:index")):
        response = client.get(url, follow=url == "/login/")
        assert response.status_code == 200, url
        assert response["Content-Security-Policy"] == STRICT_CSP, url
        assert response["Permissions-Policy"] == "camera=(), microphone=(), geolocation=()"
        assert response["X-Frame-Options"] == "DENY"
        assert response["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_it_allows_websockets_only_to_the_page_host_with_the_page_scheme(client):
    response = client.get("/login/", secure=True, headers={"host": "localhost"})

    csp = dict(part.split(" ", 1) for part in response["Content-Security-Policy"].split("; "))
    assert csp["connect-src"] == "'self' wss://localhost"


async def test_it_sends_the_headers_under_asgi_too(async_client, db):
    response = await async_client.get("/login/")

    assert response["Content-Security-Policy"] == STRICT_CSP
    assert response["Permissions-Policy"] == "camera=(), microphone=(), geolocation=()"


@pytest.mark.django_db
def test_our_pages_have_no_inline_code_the_csp_would_block(client, compliance_user, superuser):
    assert inline_code(client.get("/login/").content.decode()) == []
    client.force_login(compliance_user)
    pages = ["/", "/compliance/", "/compliance/?from=2026-11-02&to=2026-11-02"]
    pages += [reverse(f"trading:{name}") for name in ("positions", "strategies", "chain", "analytics", "alerts")]
    for url in pages:
        page = client.get(url).content.decode()
        assert inline_code(page) == [], url
        assert 'name="htmx-config"' in page and '"includeIndicatorStyles": false' in page
    client.force_login(superuser)
    for url in (
        reverse("admin:index"),
        reverse("admin:audit_auditrecord_changelist"),
        reverse("admin:trading_strategy_changelist"),
        reverse("admin:risk_risklimits_add"),
        reverse("admin:risk_eventday_add"),
        reverse("admin:auth_user_add"),
    ):
        response = client.get(url)
        assert response.status_code == 200, url
        assert inline_code(response.content.decode()) == [], url
        assert response["Content-Security-Policy"] == STRICT_CSP, url


@pytest.mark.django_db
def test_only_the_periodic_task_admin_may_run_its_inline_script(client, superuser):
    client.force_login(superuser)

    response = client.get(reverse("admin:django_celery_beat_periodictask_add"))

    assert response.status_code == 200
    assert inline_code(response.content.decode()) == ["<script> without src"]
    assert "script-src 'self' 'unsafe-inline';" in response["Content-Security-Policy"]
    assert "style-src 'self';" in response["Content-Security-Policy"]
    other = client.get(reverse("admin:django_celery_beat_crontabschedule_add"))
    assert other["Content-Security-Policy"] == STRICT_CSP


# --- Login required -------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/", "/compliance/"])
def test_it_sends_anonymous_visitors_to_the_login_page(client, url):
    response = client.get(url)

    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next={url}"


# --- Login throttling (django-axes) --------------------------------------------------------


def _login(client: Client, password: str):
    return client.post(reverse("login"), {"username": "alice", "password": password})


def test_the_lockout_is_finite_by_default():
    assert settings.AXES_FAILURE_LIMIT == 5
    assert get_cool_off() == dt.timedelta(minutes=15)


@pytest.mark.django_db
@override_settings(AXES_FAILURE_LIMIT=3, AXES_COOLOFF_TIME=dt.timedelta(minutes=15))
def test_it_locks_a_user_out_after_the_failure_limit_until_the_cool_off_ends(client, make_user):
    make_user("alice", TRADER, password=PASSWORD)

    for _ in range(2):
        assert _login(client, "wrong-password-123").status_code == 200  # the form again, with an error
    assert _login(client, "wrong-password-123").status_code == 429

    refused = _login(client, PASSWORD)
    assert refused.status_code == 429
    assert "_auth_user_id" not in client.session

    # Fourteen minutes later: still locked out.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - dt.timedelta(minutes=14))
    assert _login(client, PASSWORD).status_code == 429
    assert "_auth_user_id" not in client.session

    # Past the cool-off: the right password works again.
    AccessAttempt.objects.update(attempt_time=F("attempt_time") - dt.timedelta(minutes=16))
    accepted = _login(client, PASSWORD)
    assert accepted.status_code == 302
    assert accepted["Location"] == reverse("dashboard")
    assert client.session["_auth_user_id"]


# --- CSRF on htmx requests ---------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("url_name", ["logout", "trading:kill_all"])
def test_it_refuses_an_htmx_post_without_the_csrf_token(trader, url_name):
    client = Client(enforce_csrf_checks=True)
    client.force_login(trader)

    response = client.post(reverse(url_name), headers={"HX-Request": "true"})

    assert response.status_code == 403
    assert b"CSRF" in response.content
    assert client.session.get("_auth_user_id") == str(trader.pk)


@pytest.mark.django_db
def test_it_accepts_an_htmx_post_with_the_token_the_page_sends(trader):
    client = Client(enforce_csrf_checks=True)
    client.force_login(trader)
    page = client.get("/").content.decode()
    token = re.search(r"hx-headers='\{\"X-CSRFToken\": \"([^\"]+)\"\}'", page).group(1)

    response = client.post(reverse("logout"), headers={"HX-Request": "true", "X-CSRFToken": token})

    assert response.status_code == 302
    assert "_auth_user_id" not in client.session


# --- check --deploy ------------------------------------------------------------------------


def _check_deploy(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(64),
        "AUDIT_HMAC_KEY": secrets.token_hex(32),
        "ALLOWED_HOSTS": "quanthub.example.com",
        "SECURE_HTTPS": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "QUANTHUB_VAR_DIR": str(tmp_path / "var"),
        **overrides,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_check_deploy_is_clean_under_production_settings(tmp_path):
    result = _check_deploy(tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.slow
def test_check_deploy_fails_when_https_is_off(tmp_path):
    result = _check_deploy(tmp_path, SECURE_HTTPS="0")

    assert result.returncode != 0
    assert "security.W004" in result.stderr and "security.W012" in result.stderr


# --- In a real browser -------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served_app(tmp_path):
    """The app under daphne in its own process, on a fresh SQLite file, with one superuser."""
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env.update(QUANTHUB_VAR_DIR=str(tmp_path), DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", DEBUG="1")
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=BASE_DIR, env=env, check=True, timeout=300)
    create = (
        "from django.contrib.auth.models import User; User.objects.create_superuser('boss', '', 'a-long-test-password')"
    )
    subprocess.run(
        [*manage, "shell", "-c", create], cwd=BASE_DIR, env=env, check=True, timeout=120, capture_output=True
    )
    port = _free_port()
    daphne = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "quanthub.asgi:application"]
    server = subprocess.Popen(daphne, cwd=BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.browser
@pytest.mark.slow
def test_pages_and_admin_run_in_chromium_without_a_csp_violation(served_app):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    live_pages = ["/", "/trading/positions/", "/trading/alerts/"]
    other_pages = [
        "/compliance/",
        "/admin/",
        "/admin/risk/risklimits/add/",
        "/admin/django_celery_beat/periodictask/add/",
    ]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.add_init_script(WATCH_CSP)
            page.goto(served_app + "/login/")
            page.fill("#id_username", "boss")
            page.fill("#id_password", "a-long-test-password")
            page.click("button[type=submit]")
            page.wait_for_url(served_app + "/")
            for url in live_pages + other_pages:
                page.goto(served_app + url)
                page.wait_for_load_state("networkidle")
                assert page.evaluate("window.__csp") == [], url
                if url in live_pages:
                    assert page.evaluate("typeof htmx") == "object", url
                    # The dashboard websocket is allowed by connect-src and opens.
                    page.wait_for_selector("#connection[data-state=open]", timeout=10_000)
            # The watcher does catch what the policy blocks: inline code, another host's websocket.
            page.evaluate(
                "document.head.insertAdjacentHTML('beforeend', '<style>body{}</style>');"
                "new WebSocket('ws://localhost:1/ws/')"
            )
            page.wait_for_timeout(300)
            assert sorted(v.split()[0] for v in page.evaluate("window.__csp")) == ["connect-src", "style-src-elem"]
        finally:
            browser.close()
