"""Exiting one position on request from the API (``positions/<id>/exit``).

The exit always takes the OMS path, never a row edit. Who sends it depends on
whether an engine is trading the account (an ACTIVE heartbeat younger than
``HEALTH_ENGINE_STALE_S``):

- Engine running: the request commits the exit orders as intents (``Order``
  rows in NEW with client order ids, audited as ``order.intent`` like every
  order) and the engine sends them at its next second
  (``send_requested_exits``), priced at its live touch, after cancelling the
  strategy's other live orders on that instrument. The engine's OMS records
  the fills, so the strategy holding the position hears about them through
  ``on_fill``. Sending from another process instead would leave the strategy
  believing it still held the units, and its take-profit, stop or time stop
  would later sell them a second time, opening a short position.
- No engine: ``risk.killswitch.run_exit_position`` (the dashboard's manual
  exit) builds its own broker and OMS, as Kill All does, and works the exit
  until the position is flat or its time is up.

The NEW → SUBMITTING step is a conditional update, so if an engine and
another sender ever race for the same order only one sends it. An engine
that restarts cancels NEW orders it finds (``OrderManager.recover``), so an
exit queued just before a crash is cancelled, visibly, never sent late.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from quanthub.clock import RealClock
from risk.killswitch import _exit_price, book_from_storage, run_exit_position
from trading.models import EngineHeartbeat, Order, Position
from trading.orders.manager import OrderManager

log = logging.getLogger(__name__)
T = TypeVar("T")
QUOTE_WAIT_S = 5.0


class ExitRefused(Exception):
    """The exit was not requested; the message says why."""


@dataclass
class ExitResult:
    position_id: int
    orders: list[Order] = field(default_factory=list)
    engine_id: str | None = None  # the engine that will send the orders; None: sent here
    summary: dict | None = None  # run_exit_position's summary when sent here

    @property
    def sent_by(self) -> str:
        return f"engine:{self.engine_id}" if self.engine_id else "api"


def active_engine(account: str = "default", *, now: dt.datetime | None = None) -> EngineHeartbeat | None:
    """The engine trading ``account``, if its heartbeat is fresh."""
    now = now or timezone.now()
    horizon = now - dt.timedelta(seconds=settings.HEALTH_ENGINE_STALE_S)
    return (
        EngineHeartbeat.objects.filter(account=account, role=EngineHeartbeat.Role.ACTIVE, beat_at__gte=horizon)
        .order_by("-beat_at")
        .first()
    )


def _slices(quantity: int, instrument) -> list[int]:
    largest = max(instrument.freeze_quantity // instrument.lot_size, 1) * instrument.lot_size
    parts = []
    while quantity > 0:
        parts.append(min(quantity, largest))
        quantity -= parts[-1]
    return parts


def refuse_unless_exitable(position: Position) -> None:
    if not position.is_open:
        raise ExitRefused("the position is already flat")
    working = Order.objects.filter(
        account=position.account,
        instrument_id=position.instrument_id,
        purpose__in=[Order.Purpose.EXIT, Order.Purpose.KILL],
        state__in=Order.LIVE_STATES,
    ).values_list("client_order_id", flat=True)
    if working:
        raise ExitRefused(f"an exit is already working ({', '.join(working)})")


def commit_exit(position_id: int, *, actor: str) -> list[Order]:
    """Commit the exit orders of one open position for the engine to send
    (intent before I/O). Holds the position's row lock while it checks that
    nothing else is exiting it, so two requests cannot sell it twice."""
    with transaction.atomic():
        position = (
            Position.objects.select_for_update(of=("self",))
            .select_related("instrument", "instrument__underlying", "strategy", "signal")
            .get(pk=position_id)
        )
        refuse_unless_exitable(position)
        side = Order.Side.SELL if position.net_quantity > 0 else Order.Side.BUY
        instrument = position.instrument
        # Priced from the last stored quote; the engine re-prices at its live touch when it sends.
        price = _exit_price(side, book_from_storage([instrument.security_id]).get(instrument.security_id))
        # Committing an intent needs no broker: only the OMS's audited create is used.
        oms = OrderManager(None, None, account=position.account, clock=RealClock())
        return [
            oms._create(
                client_order_id=oms.id_factory(),
                instrument=instrument,
                strategy=position.strategy,
                signal=position.signal,
                side=side,
                purpose=Order.Purpose.EXIT,
                order_type=Order.Type.LIMIT if price else Order.Type.MARKET,
                quantity=part,
                limit_price=price,
                first_price=price,
                intent_at=oms.clock.now(),
                reason=f"manual exit by {actor}",
            )
            for part in _slices(abs(position.net_quantity), instrument)
        ]


async def send_requested_exits(
    oms: OrderManager, book=None, *, account: str = "default", quote_wait_s: float = QUOTE_WAIT_S
) -> list[Order]:
    """Send the committed exits nobody has sent yet, in the priority lane (the
    engine calls this every second), priced at the live touch. An exit whose
    instrument has no live quote yet waits up to ``quote_wait_s`` for one (an
    engine that has just started has an empty book), then goes as committed."""
    pending = await sync_to_async(
        lambda: list(
            Order.objects.filter(account=account, purpose=Order.Purpose.EXIT, state=Order.State.NEW)
            .select_related("instrument", "strategy", "signal")
            .order_by("created_at")
        ),
        thread_sensitive=True,
    )()
    sent = []
    for order in pending:
        price = _exit_price(order.side, book.get(order.instrument.security_id)) if book is not None else None
        if price is None and (timezone.now() - order.created_at).total_seconds() < quote_wait_s:
            continue
        others = await sync_to_async(
            lambda order=order: list(
                Order.objects.filter(
                    account=account,
                    instrument_id=order.instrument_id,
                    strategy_id=order.strategy_id,
                    state__in=[Order.State.OPEN, Order.State.PARTIAL],
                )
                .exclude(purpose__in=[Order.Purpose.EXIT, Order.Purpose.KILL])
                .select_related("instrument")
            ),
            thread_sensitive=True,
        )()
        for other in others:  # a scale-up still working would re-open what the exit closes
            await oms.cancel(other, reason=order.reason)
        if price is not None and price != order.limit_price:
            await sync_to_async(Order.objects.filter(pk=order.pk, state=Order.State.NEW).update, thread_sensitive=True)(
                limit_price=price, order_type=Order.Type.LIMIT
            )
            order.limit_price, order.order_type = price, Order.Type.LIMIT
        sent.append(await oms.send(order, priority=True))
    return sent


def _call(fn: Callable[..., T], *args, **kwargs) -> T:
    return fn(*args, **kwargs)


def exit_position(position_id: int, *, actor: str, run: Callable = _call) -> ExitResult:
    """Exit one open position through the OMS; see the module docstring for who sends.

    ``run(fn, *args)`` calls the standalone exit (which starts an event loop);
    the API passes one that keeps it off the ASGI request thread.
    """
    position = Position.objects.select_related("instrument").get(pk=position_id)
    engine = active_engine(position.account)
    log.warning("position exit requested", extra={"position": position_id, "actor": actor, "engine": bool(engine)})
    if engine is not None:
        orders = commit_exit(position_id, actor=actor)
        return ExitResult(position_id=position_id, orders=orders, engine_id=engine.engine_id)
    refuse_unless_exitable(position)
    started = timezone.now()
    summary = run(run_exit_position, position_id, actor, position.account)
    orders = list(
        Order.objects.filter(
            account=position.account,
            instrument_id=position.instrument_id,
            purpose=Order.Purpose.EXIT,
            created_at__gte=started,
        )
        .select_related("instrument", "strategy", "signal")
        .order_by("created_at")
    )
    return ExitResult(position_id=position_id, orders=orders, summary=summary.as_dict())
