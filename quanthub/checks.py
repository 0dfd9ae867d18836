"""System checks for dangerous combinations of settings.

They run with every management command and at server start, so a live broker
without credentials, or with DEBUG on, never starts trading.
"""

from __future__ import annotations

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=False)
def check_trading_configuration(app_configs=None, **kwargs):
    errors = []
    if settings.QUANTHUB_BROKER == "dhan":
        if not settings.DHAN_CLIENT_ID:
            errors.append(
                Error(
                    "QUANTHUB_BROKER=dhan needs DHAN_CLIENT_ID.",
                    hint="Set DHAN_CLIENT_ID or DHAN_CLIENT_ID_FILE.",
                    id="quanthub.E001",
                )
            )
        if not settings.DHAN_ACCESS_TOKEN and not (settings.DHAN_TOTP_SECRET and settings.DHAN_PIN):
            errors.append(
                Error(
                    "QUANTHUB_BROKER=dhan needs DHAN_ACCESS_TOKEN, or DHAN_TOTP_SECRET with DHAN_PIN.",
                    hint="Set them in the environment or through their _FILE variants.",
                    id="quanthub.E002",
                )
            )
        if settings.DEBUG:
            errors.append(
                Error(
                    "The live Dhan broker must not run with DEBUG on.",
                    hint="Set DEBUG=false (and SECRET_KEY, AUDIT_HMAC_KEY) for live trading.",
                    id="quanthub.E003",
                )
            )
    if settings.QUANTHUB_FEED == "dhan" and not settings.DHAN_CLIENT_ID:
        errors.append(Error("QUANTHUB_FEED=dhan needs DHAN_CLIENT_ID.", id="quanthub.E004"))
    if not settings.DEBUG and settings.AUDIT_HMAC_KEY_IS_LOCAL:
        errors.append(
            Error(
                "Production (DEBUG off) needs AUDIT_HMAC_KEY.",
                hint="Set AUDIT_HMAC_KEY or AUDIT_HMAC_KEY_FILE; the key never lives in the database.",
                id="quanthub.E005",
            )
        )
    return errors
