"""Seed the published rates: Dhan's ₹20 per executed F&O order; NSE transaction
charges (0.03503 % of option premium, 0.00173 % of futures turnover, from
1 Oct 2024); SEBI ₹10 per crore; stamp duty on buys (0.003 % options, 0.002 %
futures); GST 18 %. STT on the sell side: 0.10 % of option premium and 0.02 %
of futures turnover from 1 Oct 2024, raised by the Union Budget 2026 to 0.15 %
and 0.05 % for trades from 1 Apr 2026. Risk managers edit them in the admin."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

from django.db import migrations

RATES = [
    (
        "OPTIDX",
        dt.date(2024, 10, 1),
        "20",
        "0.10",
        "0.03503",
        "10",
        "0.003",
        "18",
        "NSE circular Oct 2024; Dhan pricing",
    ),
    (
        "FUTIDX",
        dt.date(2024, 10, 1),
        "20",
        "0.02",
        "0.00173",
        "10",
        "0.002",
        "18",
        "NSE circular Oct 2024; Dhan pricing",
    ),
    ("OPTIDX", dt.date(2026, 4, 1), "20", "0.15", "0.03503", "10", "0.003", "18", "Finance Act 2026 (STT); NSE; Dhan"),
    ("FUTIDX", dt.date(2026, 4, 1), "20", "0.05", "0.00173", "10", "0.002", "18", "Finance Act 2026 (STT); NSE; Dhan"),
]


def seed(apps, schema_editor):
    ChargeRate = apps.get_model("risk", "ChargeRate")
    for kind, start, brokerage, stt, exchange, sebi, stamp, gst, source in RATES:
        ChargeRate.objects.get_or_create(
            instrument_kind=kind,
            effective_from=start,
            defaults={
                "brokerage_per_order": D(brokerage),
                "stt_sell_pct": D(stt),
                "exchange_txn_pct": D(exchange),
                "sebi_per_crore": D(sebi),
                "stamp_buy_pct": D(stamp),
                "gst_pct": D(gst),
                "source": source,
            },
        )


class Migration(migrations.Migration):
    dependencies = [("risk", "0003_charge_rates")]

    operations = [migrations.RunPython(seed, migrations.RunPython.noop)]
