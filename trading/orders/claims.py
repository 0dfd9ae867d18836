"""One exit per position quantity.

Every exit order (a strategy's stop or target, a position's Exit, Kill All,
the daily-loss flatten) is committed through ``claim_exit`` inside the
transaction that creates it. The claim takes the instrument's row lock and
refuses a quantity that, with the exits already working on the instrument,
would be more than the position there is to close: two senders (the engine
and a standalone Kill All, or two Kill Alls) can never sell the same units
twice.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db import connection
from django.db.models import F, Sum

from marketdata.models import Instrument
from trading.models import Fill, Order, Position

EXIT_PURPOSES = (Order.Purpose.EXIT, Order.Purpose.KILL)


class ExitClaimed(Exception):
    """The quantity is already being exited by another order; nothing was committed."""


@dataclass(frozen=True, slots=True)
class BrokerNet:
    """Claim against the broker's position report instead of our books (Kill All:
    broker truth wins). ``quantity``: the absolute net reported; ``read_at``: wall
    time of the report, so exits filled since then are not counted twice."""

    quantity: int
    read_at: dt.datetime


def _lock(instrument_id: int) -> None:
    # PostgreSQL: the instrument's row lock. SQLite has no row locks: a write takes
    # the database's write lock, which serialises the claims just the same.
    if connection.vendor == "sqlite":
        Instrument.objects.filter(pk=instrument_id).update(lot_size=F("lot_size"))
    else:
        list(Instrument.objects.select_for_update().filter(pk=instrument_id).values_list("pk"))


def working_exit_quantity(account: str, instrument_id: int, side: str) -> int:
    """Units still to be sold (or bought) by the exits on the instrument: the live ones'
    remainder, and the part of a FILLED one whose fills are not booked yet (the
    acknowledgement can say FILLED a moment before the fills reach the position)."""
    return (
        Order.objects.filter(
            account=account,
            instrument_id=instrument_id,
            side=side,
            purpose__in=EXIT_PURPOSES,
            state__in=[*Order.LIVE_STATES, Order.State.FILLED],
            filled_quantity__lt=F("quantity"),
        ).aggregate(q=Sum(F("quantity") - F("filled_quantity")))["q"]
        or 0
    )


def exits_filled_since(account: str, instrument_id: int, side: str, since: dt.datetime) -> int:
    """Units the exits on the instrument filled after ``since`` (a position report's
    time): a report read before them still counts them as open."""
    return (
        Fill.objects.filter(
            order__account=account,
            order__instrument_id=instrument_id,
            order__side=side,
            order__purpose__in=EXIT_PURPOSES,
            created_at__gt=since,
        ).aggregate(q=Sum("quantity"))["q"]
        or 0
    )


def left_to_exit(account: str, instrument_id: int, side: str, broker_net: BrokerNet) -> int:
    """What the broker's reported net still needs beyond the exits working on it and
    those filled since the report: a report a moment old serves as well as a new one."""
    return (
        broker_net.quantity
        - exits_filled_since(account, instrument_id, side, broker_net.read_at)
        - working_exit_quantity(account, instrument_id, side)
    )


def our_reducible(account: str, instrument_id: int, side: str) -> int:
    net = Position.objects.filter(account=account, instrument_id=instrument_id).aggregate(q=Sum("net_quantity"))["q"]
    net = net or 0
    return max(net, 0) if side == Order.Side.SELL else max(-net, 0)


def claim_exit(
    *, account: str, instrument_id: int, side: str, quantity: int, broker_net: BrokerNet | None = None
) -> None:
    """Raise ``ExitClaimed`` unless ``quantity`` more may be exited. Call inside the
    transaction that commits the exit order."""
    _lock(instrument_id)
    working = working_exit_quantity(account, instrument_id, side)
    if broker_net is None:
        reducible = our_reducible(account, instrument_id, side)
    else:
        reducible = broker_net.quantity - exits_filled_since(account, instrument_id, side, broker_net.read_at)
    if working + quantity > reducible:
        raise ExitClaimed(
            f"{quantity} more would exceed the {max(reducible, 0)} units to close ({working} already being exited)"
        )
