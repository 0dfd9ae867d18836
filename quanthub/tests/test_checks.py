from __future__ import annotations

from django.test import override_settings

from quanthub.checks import check_trading_configuration


def ids(errors):
    return {error.id for error in errors}


@override_settings(DEBUG=True)  # pytest-django runs tests with DEBUG off; the embedded default has it on
def test_the_embedded_default_passes():
    assert check_trading_configuration() == []


@override_settings(
    QUANTHUB_BROKER="dhan",
    DHAN_CLIENT_ID="",
    DHAN_ACCESS_TOKEN="",
    DHAN_TOTP_SECRET="",
    DEBUG=False,
    AUDIT_HMAC_KEY_IS_LOCAL=False,
)
def test_it_refuses_the_live_broker_without_credentials():
    assert ids(check_trading_configuration()) == {"quanthub.E001", "quanthub.E002"}


@override_settings(
    QUANTHUB_BROKER="dhan", DHAN_CLIENT_ID="1000", DHAN_ACCESS_TOKEN="tok", DEBUG=True, AUDIT_HMAC_KEY_IS_LOCAL=False
)
def test_it_refuses_the_live_broker_with_debug_on():
    assert ids(check_trading_configuration()) == {"quanthub.E003"}


@override_settings(
    QUANTHUB_BROKER="dhan",
    DHAN_CLIENT_ID="1000",
    DHAN_ACCESS_TOKEN="",
    DHAN_TOTP_SECRET="JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    DHAN_PIN="1234",
    DEBUG=False,
    AUDIT_HMAC_KEY_IS_LOCAL=False,
)
def test_it_accepts_totp_login_instead_of_a_token():
    assert check_trading_configuration() == []


@override_settings(DEBUG=False, AUDIT_HMAC_KEY_IS_LOCAL=True)
def test_it_refuses_production_without_an_audit_key():
    assert ids(check_trading_configuration()) == {"quanthub.E005"}
