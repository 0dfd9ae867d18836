from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import responses
from django.core.management import CommandError, call_command
from django.test import override_settings

from quanthub.dhan.tokens import TokenRefreshError, TokenStore, current_token, refresh
from trading.models import Alert

FIXTURES = Path(__file__).with_name("fixtures") / "dhan"
RENEW = "https://api.dhan.co/v2/RenewToken"
TOTP = "https://auth.dhan.co/app/generateAccessToken"
CREDENTIALS = {
    "DHAN_CLIENT_ID": "1000000001",
    "DHAN_ACCESS_TOKEN": "old-token",
    "DHAN_TOTP_SECRET": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    "DHAN_PIN": "123456",
}


def fixture(name):
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def store(tmp_path):
    return TokenStore(tmp_path / "dhan" / "access_token")


@override_settings(**CREDENTIALS)
def test_a_valid_token_is_renewed_and_stored_privately(store, caplog):
    with responses.RequestsMock() as api:
        api.get(RENEW, json=fixture("renew_token.json"))
        result = refresh(store)
        assert api.calls[0].request.headers["access-token"] == "old-token"
    assert (result.method, result.token) == ("renewed", "renewed-token-value")
    assert store.read() == "renewed-token-value" and current_token(store) == "renewed-token-value"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert "renewed-token-value" not in caplog.text


@override_settings(**CREDENTIALS)
def test_an_expired_token_falls_back_to_pin_and_totp(store):
    with responses.RequestsMock() as api:
        api.get(RENEW, json=fixture("auth_failed.json"), status=401)
        api.post(TOTP, json=fixture("totp_token.json"))
        result = refresh(store)
        params = api.calls[1].request.params
    assert result.method == "totp" and store.read() == "totp-token-value"
    assert params["dhanClientId"] == "1000000001" and params["pin"] == "123456"
    assert len(params["totp"]) == 6 and params["totp"].isdigit()


@pytest.mark.django_db
@override_settings(**CREDENTIALS)
def test_a_failed_refresh_raises_an_alert_and_the_command_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr("django.conf.settings.DHAN_TOKEN_PATH", str(tmp_path / "token"))
    with responses.RequestsMock() as api:
        api.get(RENEW, json=fixture("auth_failed.json"), status=401)
        api.post(TOTP, json={"errorCode": "DH-901", "errorMessage": "Invalid TOTP"}, status=400)
        with pytest.raises(CommandError, match="renewal failed.*TOTP login failed"):
            call_command("refresh_dhan_token")
    alert = Alert.objects.get(source="token")
    assert alert.level == Alert.Level.CRITICAL and "TOTP" in alert.message
    assert "old-token" not in alert.message


@override_settings(DHAN_CLIENT_ID="1000000001", DHAN_ACCESS_TOKEN="", DHAN_TOTP_SECRET="", DHAN_PIN="")
def test_without_any_way_to_log_in_it_says_what_is_missing(store):
    with pytest.raises(TokenRefreshError, match="no DHAN_TOTP_SECRET and DHAN_PIN"):
        refresh(store)


@pytest.mark.django_db
def test_the_refresh_is_scheduled_at_0850_ist():
    from django_celery_beat.models import PeriodicTask

    task = PeriodicTask.objects.get(task="trading.refresh_dhan_token")
    assert (task.crontab.hour, task.crontab.minute, str(task.crontab.timezone)) == ("8", "50", "Asia/Kolkata")


def test_the_nightly_refresh_task_skips_an_installation_without_a_dhan_account(db, settings):
    from trading.models import Alert
    from trading.tasks import refresh_dhan_token

    settings.DHAN_CLIENT_ID = ""
    assert refresh_dhan_token()["method"].startswith("skipped")
    assert not Alert.objects.exists()
