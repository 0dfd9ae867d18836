"""Prices onto an instrument's tick: the one boundary between float analytics and exact orders.

The tick of each instrument is data from the instrument master
(``Instrument.tick_size``: ₹0.05 for index options; index futures by the
index level, ₹0.10 or ₹0.20). Nothing else in the code base knows a tick
size. A price from the quote book (a float) or from a calculation becomes a
``Decimal`` on the tick here, and only here.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

NEAREST, DOWN, UP = "nearest", "down", "up"
_ROUNDING = {NEAREST: ROUND_HALF_EVEN, DOWN: ROUND_FLOOR, UP: ROUND_CEILING}


class NoTick(ValueError):
    """The instrument carries no usable tick size (a broken master row)."""


def to_tick(value, tick: Decimal, rounding: str = NEAREST) -> Decimal:
    """``value`` (float, str, int or Decimal) as a Decimal multiple of ``tick``.

    ``rounding``: ``nearest``; ``down`` for a price that must not exceed the
    value (a sell at the bid); ``up`` for one that must not fall below it (a buy
    at the ask). A float goes through ``str`` first, so 52406.299999999996 is
    52406.3 before it is rounded.
    """
    tick = Decimal(tick)
    if not tick.is_finite() or tick <= 0:
        raise NoTick(f"tick size must be positive, got {tick}")
    exact = value if isinstance(value, Decimal) else Decimal(str(value))
    steps = (exact / tick).to_integral_value(_ROUNDING[rounding])
    return (steps * tick).quantize(tick)


def price_on_tick(instrument, value, rounding: str = NEAREST) -> Decimal:
    """``value`` on ``instrument``'s own tick (``Instrument.tick_size`` from the master)."""
    return to_tick(value, instrument.tick_size, rounding)


def marketable(instrument, side: str, touch) -> Decimal | None:
    """A limit price at the touch that still crosses it: a sell rounds down, a buy up.

    ``touch``: the bid for a sell, the ask for a buy; None or ≤ 0 means no market.
    """
    if touch is None or touch <= 0:
        return None
    price = price_on_tick(instrument, touch, DOWN if side == "SELL" else UP)
    return price if price > 0 else instrument.tick_size


def is_on_tick(price: Decimal, tick: Decimal) -> bool:
    return Decimal(tick) > 0 and price % Decimal(tick) == 0
