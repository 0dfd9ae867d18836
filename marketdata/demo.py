"""The synthetic market's instruments, for the embedded default and tests:
written in Dhan's scrip-master format and loaded through the real loader."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from django.conf import settings

from marketdata import synthetic
from marketdata.master import load
from marketdata.models import ExchangeHoliday
from quanthub.clock import RealClock


def write_synthetic_master(today: dt.date | None = None) -> Path:
    today = today or RealClock().today()
    holidays = set(ExchangeHoliday.objects.filter(exchange="NSE").values_list("date", flat=True))
    path = Path(settings.VAR_DIR) / "instruments" / f"synthetic-{today:%Y%m%d}.csv"
    synthetic.write_master(path, today, holidays)
    return path


def ensure_demo_instruments(today: dt.date | None = None) -> int:
    """Load the synthetic master for ``today``; returns the number of active instruments."""
    result = load(write_synthetic_master(today), underlyings=tuple(synthetic.SYNTHETIC_MARKET))
    return (
        result.created + result.updated + (0 if result.created or result.updated else _active_count(result.underlyings))
    )


def _active_count(underlyings) -> int:
    from marketdata.models import Instrument

    return Instrument.objects.filter(underlying__symbol__in=underlyings, is_active=True).count()
