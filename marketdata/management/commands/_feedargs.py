from __future__ import annotations

import datetime as dt

from django.core.management.base import CommandError


def parse_speed(value: str) -> float | str:
    if value == "max":
        return "max"
    try:
        speed = float(value)
    except ValueError:
        raise CommandError(f"--speed takes a positive number or 'max', got {value!r}") from None
    if speed <= 0:
        raise CommandError(f"--speed takes a positive number or 'max', got {value!r}")
    return speed


def parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"--date takes YYYY-MM-DD, got {value!r}") from None
