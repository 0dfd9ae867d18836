"""Browser tests: Debian's Chromium driven by Playwright against Quant Hub served
with the engine on the simulator and the paper broker (``run_engine --serve``),
exactly what the README's run command starts, in a fresh SQLite file.

Screenshots of every page go to ``artifacts/screenshots/``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DAY = "2026-11-23"  # a Monday
SPEED = "3"
# Informed flow every three simulated minutes, each position held to its time exit: a
# held position is on the book whichever order the tests run in.
SCENARIO = Path(__file__).with_name("browser_scenario.json")
SHOTS = Path(settings.ARTIFACTS_DIR) / "screenshots"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.xdist_group("browser"),  # one served app for the whole module
    pytest.mark.timeout(420),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port} after {timeout} s")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Migrate a fresh SQLite file, seed the demo users, serve app + engine."""
    var = tmp_path_factory.mktemp("served")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "DJANGO_"))}
    env.update(
        QUANTHUB_VAR_DIR=str(var),
        DATABASE_URL=f"sqlite:///{var / 'quanthub.sqlite3'}",
        DEBUG="1",
        QUANTHUB_TESTING="0",
        PYTHONUNBUFFERED="1",
    )
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
    credentials = var / "logins.txt"
    subprocess.run([*manage, "migrate", "--no-input", "-v", "0"], env=env, check=True, timeout=180)
    subprocess.run(
        [*manage, "seed_demo", "--enable-strategy", "--credentials-file", str(credentials)],
        env=env,
        check=True,
        timeout=180,
        capture_output=True,
    )
    logins = {}
    for line in credentials.read_text().splitlines():
        parts = line.split()
        logins[parts[-2]] = parts[-1]
    port = _free_port()
    log = open(var / "server.log", "wb")  # noqa: SIM115  (closed at teardown)
    process = subprocess.Popen(
        [
            *manage,
            "run_engine",
            "--serve",
            "--port",
            str(port),
            "--speed",
            SPEED,
            "--date",
            DAY,
            "--seed",
            "7",
            "--scenario",
            str(SCENARIO),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_port(port, process, 90)
        yield {"url": f"http://127.0.0.1:{port}", "logins": logins, "env": env, "manage": manage, "var": var}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        log.close()
        if process.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
            print((var / "server.log").read_text()[-5000:])


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=15_000)

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield chromium
        chromium.close()


def expect(locator):
    # Imported late: Playwright is a test-only dependency of this module.
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _login(browser, served, username: str):
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.goto(served["url"] + "/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", served["logins"][username])
    page.click("button[type=submit]")
    page.wait_for_url(served["url"] + "/")
    page.wait_for_selector("#connection[data-state=open]", timeout=15_000)
    return context, page


def _text(page, testid: str) -> str:
    return page.locator(f"[data-testid={testid}]").first.inner_text().strip()


def _press(page, milliseconds: int, *, leave_after: int | None = None) -> None:
    """Press the Kill All button with the mouse for a while (leaving it early if asked)."""
    page.wait_for_timeout(700)  # the websocket's first message re-renders the panels
    button = page.locator("[data-testid=kill-all]")
    button.hover()
    page.mouse.down()
    if leave_after is not None:
        page.wait_for_timeout(leave_after)
        page.mouse.move(5, 5)
        page.wait_for_timeout(milliseconds - leave_after)
    else:
        page.wait_for_timeout(milliseconds)
    page.mouse.up()


def _server_log_tail(served, lines: int = 40) -> str:
    return "\n".join((served["var"] / "server.log").read_text(errors="replace").splitlines()[-lines:])


def _shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_a_trader_watches_the_book_live_and_kill_all_takes_it_flat(browser, served):
    context, page = _login(browser, served, "trader")
    # Positions and P&L arrive over the websocket: the page is never reloaded.
    try:
        expect(page.get_by_test_id("open-positions")).not_to_have_text("0", timeout=180_000)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nthe served engine's log ends:\n{_server_log_tail(served)}") from None
    first_pnl = _text(page, "net-pnl")
    expect(page.get_by_test_id("net-pnl")).not_to_have_text(first_pnl, timeout=60_000)
    _shot(page, "overview")
    page.goto(served["url"] + "/trading/positions/")
    page.wait_for_selector("#connection[data-state=open]")
    legs = page.locator("#panel-positions tbody tr[id^=position-]").count()
    assert legs >= 1
    _shot(page, "positions")

    _press(page, 2300)
    # Live progress, then the summary, then a flat book and a halted account.
    page.wait_for_selector("[data-testid=kill-summary]", timeout=30_000)
    summary = _text(page, "kill-summary")
    assert summary.startswith("Flat"), summary
    sent = int(re.search(r"(\d+) exits sent", summary).group(1))
    assert sent >= 1, summary  # the book was not empty when the button was held
    expect(page.locator("#panel-positions")).to_contain_text("No open positions.", timeout=30_000)
    _shot(page, "positions-after-kill-all")
    page.goto(served["url"] + "/")
    expect(page.get_by_test_id("open-positions")).to_have_text("0")
    expect(page.get_by_test_id("trading-state")).to_have_text("Halted")
    _shot(page, "overview-after-kill-all")

    for path, name in [
        ("/trading/strategies/", "strategies"),
        ("/trading/chain/", "option-chain"),
        ("/trading/chain/?underlying=BANKNIFTY", "option-chain-banknifty"),
        ("/trading/analytics/", "latency-and-alpha-decay"),
        ("/trading/alerts/", "alerts"),
        ("/trading/backtests/", "backtests"),
    ]:
        page.goto(served["url"] + path)
        page.wait_for_timeout(1500)  # a push or two
        _shot(page, name)
    page.goto(served["url"] + "/trading/chain/")
    assert page.locator("table.chain tbody tr").count() > 10
    # A tablet in portrait: the panels stack into one column and nothing needs sideways scrolling.
    page.set_viewport_size({"width": 820, "height": 1180})
    page.goto(served["url"] + "/")
    page.wait_for_timeout(1000)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 820
    _shot(page, "overview-tablet")
    context.close()


LIVE_PAGES = [
    ("/", "overview"),
    ("/trading/positions/", "positions"),
    ("/trading/strategies/", "strategies"),
    ("/trading/chain/", "option-chain"),
    ("/trading/chain/?underlying=BANKNIFTY", "option-chain-banknifty"),
    ("/trading/analytics/", "latency-and-alpha-decay"),
    ("/trading/alerts/", "alerts"),
    ("/trading/backtests/", "backtests"),
]


def test_no_page_logs_a_console_error_through_a_minute_of_live_updates(browser, served):
    """Every page, for 8 s each (over a minute in all) while the engine pushes: no
    console error (htmx logs a pushed panel the page does not show as
    htmx:oobErrorNoTarget), no uncaught exception, no failed request."""
    context, page = _login(browser, served, "trader")
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"{page.url} console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"{page.url} pageerror: {e}"))
    page.on(
        "requestfailed",
        # Leaving a page aborts what it still had in flight: that is not a failure.
        lambda r: (
            problems.append(f"{page.url} request failed: {r.url} {r.failure}")
            if "ERR_ABORTED" not in (r.failure or "")
            else None
        ),
    )
    frames = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda payload: frames.append(len(payload))))
    began = time.monotonic()
    for path, _ in LIVE_PAGES:
        page.goto(served["url"] + path)
        page.wait_for_selector("#connection[data-state=open]") if path != "/trading/backtests/" else None
        page.wait_for_timeout(8000)
    assert time.monotonic() - began >= 60
    assert frames, "no live update arrived"
    assert problems == []
    # The same at tablet width, where the panels stack.
    page.set_viewport_size({"width": 820, "height": 1180})
    for path, name in LIVE_PAGES[:4]:
        page.goto(served["url"] + path)
        page.wait_for_timeout(2500)
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 820 or name.startswith("option-chain")
        _shot(page, f"{name}-tablet")
    assert problems == []
    context.close()


def test_releasing_kill_all_early_does_nothing(browser, served):
    context, page = _login(browser, served, "risk")
    posts = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
    state = _text(page, "trading-state")
    _press(page, 1200)
    page.wait_for_timeout(2000)
    assert not [u for u in posts if "kill-all" in u]
    assert page.locator("[data-testid=kill-progress]").count() == 0
    assert _text(page, "trading-state") == state
    # Leaving the button while holding cancels too.
    _press(page, 2800, leave_after=800)
    assert not [u for u in posts if "kill-all" in u]
    context.close()


def test_a_risk_manager_changes_a_limit_in_the_admin_and_the_risk_panel_shows_it(browser, served):
    context, watcher = _login(browser, served, "risk")
    before = _text(watcher, "loss-cap")
    admin = context.new_page()
    admin.goto(served["url"] + "/admin/risk/risklimits/")
    admin.locator("#result_list tbody tr a").first.click()
    change_url = admin.url
    field = admin.locator("input[name=daily_loss_cap]")
    current = float(field.input_value())
    new = int(current) + 1234
    field.fill(str(new))
    admin.click("input[name=_save]")
    admin.wait_for_selector(".messagelist .success, ul.messagelist li.success")
    _shot(admin, "admin-risk-limits")
    expected = f"₹{new // 1000},{new % 1000:03d}.00"
    # The open dashboard picks the change up over the websocket, without a reload.
    expect(watcher.get_by_test_id("loss-cap")).to_have_text(expected, timeout=20_000)
    assert _text(watcher, "loss-cap") != before
    _shot(watcher, "risk-panel-after-limit-change")
    # A bad value gets a clear error and changes nothing.
    admin.goto(change_url)
    admin.locator("input[name=daily_loss_cap]").fill("9999999999999999")  # more digits than a cap may have
    admin.click("input[name=_save]")
    expect(admin.locator(".errorlist").first).to_contain_text("digits")
    admin.goto(served["url"] + "/")
    expect(admin.get_by_test_id("loss-cap")).to_have_text(expected)
    context.close()


def test_a_compliance_user_downloads_a_verified_audit_export(browser, served, tmp_path):
    context, page = _login(browser, served, "compliance")
    page.goto(served["url"] + "/compliance/?from=2026-01-01&to=2030-12-31")
    verification = page.locator("[data-testid=verification]").inner_text()
    assert verification.startswith("Verified:"), verification
    assert int(re.search(r"Verified: (\d+)", verification).group(1)) > 0
    _shot(page, "compliance")
    with page.expect_download() as download_info:
        page.get_by_role("link", name="JSONL").click()
    target = tmp_path / download_info.value.suggested_filename
    download_info.value.save_as(target)
    assert target.stat().st_size > 0
    checked = subprocess.run(
        [*served["manage"], "verify_audit", "--file", str(target)],
        env=served["env"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Compliance sees the dashboards without trading controls: not rendered at all.
    page.goto(served["url"] + "/")
    page.wait_for_timeout(1500)  # pushed panels too
    assert page.locator("[data-testid=kill-all]").count() == 0
    # A forced press is refused, and the page says so.
    page.evaluate("""() => htmx.ajax('POST', '/trading/kill-all/', {target: '#panel-killall', swap: 'outerHTML'})""")
    expect(page.locator("#toast")).to_contain_text("Refused", timeout=10_000)
    context.close()


def test_an_anonymous_visitor_goes_to_the_login_page_and_its_websocket_is_refused(browser, served):
    context = browser.new_context()
    page = context.new_page()
    page.goto(served["url"] + "/trading/positions/")
    assert "/login/" in page.url
    _shot(page, "login")
    outcome = page.evaluate(
        """(url) => new Promise((resolve) => {
            const ws = new WebSocket(url);
            ws.onopen = () => resolve('open');
            ws.onclose = (e) => resolve('closed:' + e.code);
        })""",
        served["url"].replace("http", "ws") + "/ws/dashboard/",
    )
    assert outcome.startswith("closed"), outcome
    context.close()
