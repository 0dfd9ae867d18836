"""Exiting one position on request (the API's ``positions/<id>/exit``).

The exit takes the OMS path, never a row edit: the request commits the exit
orders as intents (``Order`` rows in NEW with client order ids, audited as
``order.intent`` like every order) and then one process sends them:

- When an engine is trading the account (an ACTIVE heartbeat younger than
  ``HEALTH_ENGINE_STALE_S``), the engine sends them at its next second
  (``send_requested_exits``), priced at its live touch. Its OMS records the
  fills, so the strategy holding the position hears about them through
  ``on_fill`` and does not later send its own exit for units already sold.
  Sending from this process instead would leave the strategy believing it
  still held the position, and its time or price stop would then open a
  position the other way.
- With no engine, the request sends them itself through an OMS and broker
  built as ``run_kill_all`` builds them, priced from the last stored quotes.

Either way the NEW → SUBMITTING step is a conditional update, so if both an
engine and the request try to send the same order only one does.
"""

from __future__ import annotations

import asyncio
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
from risk.killswitch import _exit_price, book_from_storage, offline_oms
from risk.models import TradingState
from risk.services import get_trading_state
from trading.models import EngineHeartbeat, Order, Position
from trading.oms import OrderManager

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


def commit_exit(position_id: int, *, actor: str) -> list[Order]:
    """Commit the exit orders of one open position (intent before I/O).

    Holds the position's row lock while it checks that nothing else is
    already exiting it, so two clicks cannot sell the position twice.
    """
    with transaction.atomic():
        position = (
            Position.objects.select_for_update(of=("self",))
            .select_related("instrument", "instrument__underlying", "strategy", "signal")
            .get(pk=position_id)
        )
        if not position.is_open:
            raise ExitRefused("the position is already flat")
        state = get_trading_state(position.account).state
        if state == TradingState.State.HALTED:
            raise ExitRefused("trading is HALTED: nothing but cancels (Kill All exits everything)")
        working = Order.objects.filter(
            account=position.account,
            instrument=position.instrument,
            purpose__in=[Order.Purpose.EXIT, Order.Purpose.KILL],
            state__in=Order.LIVE_STATES,
        )
        if working.exists():
            raise ExitRefused(f"an exit is already working ({', '.join(o.client_order_id for o in working)})")
        side = Order.Side.SELL if position.net_quantity > 0 else Order.Side.BUY
        instrument = position.instrument
        book = book_from_storage([instrument.security_id])
        price = _exit_price(side, book.get(instrument.security_id))
        # Committing an intent needs no broker: only the OMS's audited create is used.
        oms = OrderManager(None, None, account=position.account, clock=RealClock())
        reason = f"exit requested by {actor}"
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
                reason=reason,
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
        if price is not None and price != order.limit_price:
            await sync_to_async(Order.objects.filter(pk=order.pk, state=Order.State.NEW).update, thread_sensitive=True)(
                limit_price=price, order_type=Order.Type.LIMIT
            )
            order.limit_price, order.order_type = price, Order.Type.LIMIT
        sent.append(await oms.send(order, priority=True))
    return sent


def _fresh(order_id: int) -> Order:
    return Order.objects.select_related("instrument", "strategy", "signal").get(pk=order_id)


def send_exits_now(orders: list[Order], *, account: str, confirm_s: float = 3.0) -> list[Order]:
    """No engine: send the committed exits from this process and wait up to
    ``confirm_s`` for the broker to confirm fills."""
    ids = {o.instrument.security_id for o in orders} | {o.instrument.underlying.security_id for o in orders}
    broker, oms, book = offline_oms(account, ids)

    async def go() -> list[Order]:
        try:
            sent = [await oms.send(order, priority=True) for order in orders]
            deadline = asyncio.get_running_loop().time() + confirm_s
            while any(o.state in (Order.State.OPEN, Order.State.PARTIAL) for o in sent):
                if asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(0.05)
                await broker.on_market_data()
                await oms.sync()
                sent = [await sync_to_async(_fresh, thread_sensitive=True)(o.pk) for o in sent]
            return sent
        finally:
            await broker.close()

    return asyncio.run(go())


def _call(fn: Callable[..., T], *args, **kwargs) -> T:
    return fn(*args, **kwargs)


def exit_position(position_id: int, *, actor: str, run: Callable = _call) -> ExitResult:
    """Exit one open position through the OMS; see the module docstring for who sends.

    ``run(fn, *args, **kwargs)`` calls the sending (which starts an event loop);
    the API passes one that keeps it off the ASGI request thread.
    """
    orders = commit_exit(position_id, actor=actor)
    account = orders[0].account
    engine = active_engine(account)
    result = ExitResult(position_id=position_id, orders=orders, engine_id=engine.engine_id if engine else None)
    log.warning(
        "position exit requested",
        extra={"position": position_id, "actor": actor, "orders": [o.client_order_id for o in orders]},
    )
    if engine is None:
        result.orders = run(send_exits_now, orders, account=account)
    return result
