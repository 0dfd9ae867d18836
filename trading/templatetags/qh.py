"""Formatting for the dashboards: money in rupees, signs as CSS classes, Greeks."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template

register = template.Library()


def _number(value) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


@register.filter
def rupees(value) -> str:
    """₹ with Indian digit grouping (12,34,567.89); negative amounts with a minus sign."""
    number = _number(value)
    if number is None:
        return "—"
    sign = "−" if number < 0 else ""
    whole, _, frac = f"{abs(number):.2f}".partition(".")
    head, tail = whole[:-3], whole[-3:]
    groups = []
    while len(head) > 2:
        groups.insert(0, head[-2:])
        head = head[:-2]
    if head:
        groups.insert(0, head)
    grouped = ",".join([*groups, tail]) if groups else tail
    return f"{sign}₹{grouped}.{frac}"


@register.filter
def sign(value) -> str:
    number = _number(value)
    if number is None or number == 0:
        return ""
    return "up" if number > 0 else "down"


@register.filter
def pct(value) -> str:
    """A share (0.42) as a percentage (42.0 %)."""
    number = _number(value)
    return "—" if number is None else f"{number * 100:.1f} %"


@register.filter
def num(value, places=2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    number = _number(value)
    return "—" if number is None else f"{number:.{int(places)}f}"


@register.filter
def mmss(seconds) -> str:
    number = _number(seconds)
    if number is None:
        return "—"
    total = max(int(number), 0)
    return f"{total // 60}:{total % 60:02d}"


# The option chain renders some 250 numbers a push; Django's floatformat and intcomma go
# through the locale machinery for each. These two give the same text for the
# numbers the chain shows, at a fraction of the cost.


@register.filter
def fixed(value, places=2) -> str:
    """A number with ``places`` decimals, rounded half up: ``floatformat:places``
    (positive places) without the locale lookups. Empty for no number, as floatformat."""
    number = _number(value)
    if number is None:
        return ""
    places = int(places)
    text = f"{number.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):.{places}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # "-0.00" is "0.00"


@register.filter
def thousands(value) -> str:
    """An integer with a comma every three digits: ``intcomma`` without the locale lookups."""
    if isinstance(value, bool) or not isinstance(value, int):
        from django.contrib.humanize.templatetags.humanize import intcomma

        return intcomma(value)
    return f"{value:,}"
