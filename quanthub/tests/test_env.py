from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from quanthub.env import env_bool, env_choice, env_decimal, env_int, env_list, env_secret, env_str

ROOT = Path(__file__).resolve().parents[2]


def test_it_reads_defaults_when_unset():
    assert env_bool("X", True, env={}) is True
    assert env_int("X", 5, env={}) == 5
    assert env_decimal("X", Decimal("1.5"), env={}) == Decimal("1.5")
    assert env_list("X", ["a"], env={}) == ["a"]
    assert env_str("X", "d", env={"X": ""}) == "d"


def test_it_parses_typed_values():
    assert env_bool("FLAG", env={"FLAG": "Yes"}) is True
    assert env_bool("FLAG", True, env={"FLAG": "off"}) is False
    assert env_int("N", 0, env={"N": " 42 "}) == 42
    assert env_decimal("GRACE_S", Decimal(1), env={"GRACE_S": "1.5"}, minimum=Decimal("0.5")) == Decimal("1.5")
    assert env_list("HOSTS", env={"HOSTS": "a.example, b.example,,"}) == ["a.example", "b.example"]
    assert env_choice("BROKER", ("paper", "dhan"), "paper", env={"BROKER": "DHAN"}) == "dhan"


@pytest.mark.parametrize(
    ("reader", "env", "message"),
    [
        (lambda e: env_bool("DEBUG", env=e), {"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        (lambda e: env_int("PORT", 1, env=e), {"PORT": "eighty"}, "PORT must be an integer"),
        (lambda e: env_int("PORT", 1, env=e, minimum=1), {"PORT": "0"}, "PORT must be at least 1"),
        (lambda e: env_int("PORT", 1, env=e, maximum=9), {"PORT": "10"}, "PORT must be at most 9"),
        (lambda e: env_decimal("CAP", Decimal(1), env=e), {"CAP": "1,000"}, "CAP must be a decimal"),
        (lambda e: env_decimal("CAP", Decimal(1), env=e), {"CAP": "NaN"}, "CAP must be a finite"),
        (
            lambda e: env_decimal("GRACE_S", Decimal(1), env=e, minimum=Decimal("0.5")),
            {"GRACE_S": "0.25"},
            "GRACE_S must be at least 0.5",
        ),
        (lambda e: env_decimal("GRACE_S", Decimal(1), env=e, maximum=Decimal(60)), {"GRACE_S": "61"}, "at most 60"),
        (
            lambda e: env_choice("QUANTHUB_BROKER", ("paper", "dhan"), "paper", env=e),
            {"QUANTHUB_BROKER": "zerodha"},
            "QUANTHUB_BROKER must be one of paper, dhan",
        ),
    ],
)
def test_it_names_the_variable_on_a_bad_value(reader, env, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        reader(env)


def test_it_reads_a_secret_from_a_file(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("s3cr3t\n")
    assert env_secret("DHAN_ACCESS_TOKEN", env={"DHAN_ACCESS_TOKEN_FILE": str(secret)}) == "s3cr3t"


def test_it_refuses_both_a_secret_and_its_file(tmp_path):
    secret = tmp_path / "token"
    secret.write_text("x")
    env = {"AUDIT_HMAC_KEY": "a", "AUDIT_HMAC_KEY_FILE": str(secret)}
    with pytest.raises(ImproperlyConfigured, match="Set AUDIT_HMAC_KEY or AUDIT_HMAC_KEY_FILE, not both"):
        env_secret("AUDIT_HMAC_KEY", env=env)


def test_it_refuses_an_unreadable_or_empty_secret_file(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="DHAN_PIN_FILE points at .* cannot be read"):
        env_secret("DHAN_PIN", env={"DHAN_PIN_FILE": str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(ImproperlyConfigured, match="DHAN_PIN_FILE points at .* which is empty"):
        env_secret("DHAN_PIN", env={"DHAN_PIN_FILE": str(empty)})


def _manage(args: list[str], extra_env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_URL", "REDIS_URL", "DHAN_", "QUANTHUB_", "SECRET_KEY", "AUDIT_", "DEBUG"))
    }
    env.update({"QUANTHUB_VAR_DIR": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "perhaps"}, "DEBUG must be a boolean"),
        ({"DEBUG": "false"}, "SECRET_KEY must be set when DEBUG is off"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL must be a sqlite:// or postgres:// URL"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL must start with redis://"),
        ({"QUANTHUB_FEED": "bloomberg"}, "QUANTHUB_FEED must be one of sim, replay, dhan"),
        ({"DHAN_HTTP_TIMEOUT_S": "0"}, "DHAN_HTTP_TIMEOUT_S must be at least 1"),
    ],
)
def test_bad_configuration_stops_start_up_naming_the_variable(env, message, tmp_path):
    result = _manage(["check"], env, tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_live_broker_without_credentials_fails_the_system_check(tmp_path):
    result = _manage(["check"], {"QUANTHUB_BROKER": "dhan"}, tmp_path)
    assert result.returncode != 0
    for check_id in ("quanthub.E001", "quanthub.E002", "quanthub.E003"):
        assert check_id in result.stderr


def test_production_settings_pass_the_deploy_check(tmp_path):
    env = {
        "DEBUG": "false",
        "SECRET_KEY": "x" * 64 + "-production-secret-key-with-enough-entropy-0123456789",
        "AUDIT_HMAC_KEY": "k" * 48,
        "ALLOWED_HOSTS": "quanthub.example.com",
        "SECURE_HTTPS": "true",
    }
    result = _manage(["check", "--deploy", "--fail-level", "WARNING"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout
