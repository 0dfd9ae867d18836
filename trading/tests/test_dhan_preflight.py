"""The Dhan pre-flight: the command, the operators' page and the live engine's
refusal to start on a failing line (unless --force, audited), from recorded
Dhan v2 responses."""

from __future__ import annotations

import email.utils
import json
import time
from pathlib import Path

import pytest
import responses
from django.core.management import CommandError, call_command

from audit.models import AuditRecord

API = "https://api.dhan.co/v2"
FIXTURES = Path(__file__).with_name("fixtures") / "dhan"
LINES = ["token", "static IP", "data plan", "kill switch", "P&L exit", "funds", "instrument master", "clock skew"]

pytestmark = pytest.mark.django_db


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def dhan_settings(settings, tmp_path):
    settings.DHAN_CLIENT_ID = "1000000001"
    settings.DHAN_ACCESS_TOKEN = "preflight-access-token-value"
    settings.DHAN_TOKEN_PATH = str(tmp_path / "token")
    settings.DHAN_API_BASE_URL = API
    return settings


def profile(valid_until: str):
    return {**fixture("profile.json"), "tokenValidity": valid_until}


@pytest.fixture
def dhan(dhan_settings, demo_market):  # demo_market: the instrument master, loaded through the real loader
    date = {"Date": email.utils.formatdate(usegmt=True)}
    with responses.RequestsMock(assert_all_requests_are_fired=False) as api:
        api.get(f"{API}/profile", json=profile("31/12/2099 08:50"), headers=date)
        api.get(f"{API}/ip/getIP", json=fixture("ip.json"), headers=date)
        api.post(f"{API}/optionchain", json=fixture("option_chain.json"), headers=date)
        api.get(f"{API}/killswitch", json=fixture("killswitch_status.json"), headers=date)
        api.get(f"{API}/pnlExit", json=fixture("pnl_exit.json"), headers=date)
        api.get(f"{API}/fundlimit", json=fixture("fundlimit.json"), headers=date)
        yield api


def test_every_line_passes_on_a_ready_account(dhan, capsys):
    call_command("dhan_preflight")
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["PASS"] * len(LINES)
    for name, line in zip(LINES, out, strict=True):
        assert name in line
    assert "203.0.113.10" in "\n".join(out) and "active at ₹27000.00" in "\n".join(out)


def test_a_failing_line_fails_the_command_with_its_reason(dhan, capsys):
    dhan.replace(
        responses.GET, f"{API}/killswitch", json={"dhanClientId": "1000000001", "killSwitchStatus": "ACTIVATE"}
    )
    dhan.replace(
        responses.POST,
        f"{API}/optionchain",
        json={"data": {"806": "Data APIs not Subscribed"}, "status": "failed"},
        status=400,
    )
    with pytest.raises(CommandError, match="data plan, kill switch"):
        call_command("dhan_preflight", "--json")
    report = json.loads(capsys.readouterr().out)
    by_name = {line["name"]: line for line in report["lines"]}
    assert not report["ok"] and list(by_name) == LINES
    assert "806" in by_name["data plan"]["detail"] and "ON" in by_name["kill switch"]["detail"]
    assert by_name["token"]["ok"] and by_name["funds"]["ok"]


def test_a_token_about_to_expire_and_a_skewed_clock_fail(dhan, capsys):
    soon = time.strftime("%d/%m/%Y %H:%M", time.localtime(time.time() - 3600))
    dhan.replace(responses.GET, f"{API}/profile", json=profile(soon), headers={"Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
    with pytest.raises(CommandError):
        call_command("dhan_preflight", "--json")
    by_name = {line["name"]: line for line in json.loads(capsys.readouterr().out)["lines"]}
    assert not by_name["token"]["ok"] and "refresh_dhan_token" in by_name["token"]["detail"]
    assert not by_name["clock skew"]["ok"]


def test_the_operators_page_shows_every_line(dhan, client, trader):
    dhan.replace(responses.GET, f"{API}/ip/getIP", json={**fixture("ip.json"), "primaryIP": ""})
    client.force_login(trader)
    page = client.get("/trading/preflight/")
    assert page.status_code == 200
    html = page.content.decode()
    assert html.count('data-testid="preflight-line"') == len(LINES)
    for name in LINES:
        assert f"<td>{name.replace('&', '&amp;')}</td>" in html
    assert "no static IP whitelisted" in html and "refuses to start" in html


def test_the_live_engine_refuses_to_start_on_a_failing_line_unless_forced_and_audited(dhan, dhan_settings, monkeypatch):
    from trading.management.commands import run_engine

    dhan_settings.QUANTHUB_BROKER = "dhan"
    dhan.replace(responses.GET, f"{API}/pnlExit", json={"pnlExitStatus": "DISABLED"})
    with pytest.raises(CommandError, match="pre-flight failed .*P&L exit.*--force"):
        call_command("run_engine", "--broker", "dhan", "--feed", "dhan", "--no-standby")
    assert not AuditRecord.objects.filter(action="engine.preflight_forced").exists()
    started = []
    monkeypatch.setattr(run_engine.Command, "_serve", lambda self, *a: started.append(a))
    monkeypatch.setattr(run_engine.asyncio, "run", lambda coro: (coro.close(), started.append("run"))[1] and None)
    call_command("run_engine", "--broker", "dhan", "--feed", "dhan", "--no-standby", "--force")
    record = AuditRecord.objects.get(action="engine.preflight_forced")
    assert record.payload["failed"][0]["name"] == "P&L exit" and started == ["run"]
