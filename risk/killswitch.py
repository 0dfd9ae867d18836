"""Kill All: get flat now.

Sets HALTED, cancels open orders, sends an exit for every open position
through the rate limiter's priority lane, confirms each fill and re-prices
resting exits within the modification cap, and only when flat activates the
broker's kill switch (Dhan accepts it only with no positions and no pending
orders). Progress goes out as dashboard events — which may fail (Redis down)
without stopping anything. It needs no engine: ``run_kill_all`` builds the
broker and the OMS itself, pricing exits from the last stored quotes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from decimal import Decimal

from asgiref.sync import sync_to_async

from audit.chain import append as audit_append
from risk.models import TradingState
from risk.services import set_trading_state
from trading.brokers.base import Rejected, Unavailable
from trading.brokers.safety import kill_switch_check
from trading.events import asend_now
from trading.models import Order, Position
from trading.orders.manager import OrderRefused

log = logging.getLogger(__name__)
TICK = Decimal("0.05")


@dataclass
class KillAllSummary:
    legs: int = 0
    sent: int = 0
    filled: int = 0
    cancelled: int = 0
    flat: bool = False
    kill_switch: bool = False
    sent_s: float | None = None
    flat_s: float | None = None
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _db(fn):
    return sync_to_async(fn, thread_sensitive=True)


def _exit_price(side: str, quote) -> Decimal | None:
    if quote is None:
        return None
    touch = Decimal(str(quote.bid if side == "SELL" else quote.ask))
    return touch if touch > 0 else None


async def exit_leg(oms, book, position: Position, *, purpose: str, reason: str) -> list[Order]:
    """Send the orders that flatten one position (sliced at the freeze quantity),
    in the rate limiter's priority lane, priced at the touch when there is one."""
    side = Order.Side.SELL if position.net_quantity > 0 else Order.Side.BUY
    quantity = abs(position.net_quantity)
    instrument = position.instrument
    largest = max(instrument.freeze_quantity // instrument.lot_size, 1) * instrument.lot_size
    price = _exit_price(side, book.get(instrument.security_id) if book else None)
    orders = []
    while quantity > 0:
        part = min(quantity, largest)
        quantity -= part
        orders.append(
            await oms.submit(
                instrument=instrument,
                side=side,
                quantity=part,
                limit_price=price,
                purpose=purpose,
                order_type=Order.Type.LIMIT if price else Order.Type.MARKET,
                strategy=position.strategy,
                signal=position.signal,
                priority=True,
                check_slippage_rule=False,
                reason=reason,
            )
        )
    return orders


async def kill_all(
    *,
    broker,
    oms,
    actor: str,
    reason: str,
    account: str = "default",
    progress=None,
    activate_kill_switch: bool = True,
    halt_first: bool = True,
    timeout_s: float = 15.0,
) -> KillAllSummary:
    began = time.monotonic()
    summary = KillAllSummary()

    async def report(stage: str) -> None:
        data = {"stage": stage, **summary.as_dict(), "actor": actor}
        if progress is not None:
            progress(data)
        await asend_now("kill_all", data, account=account)  # never raises: a dead Redis only loses the event

    if halt_first:
        await _db(set_trading_state)(
            TradingState.State.HALTED, actor=actor, reason=f"Kill All: {reason}", account=account
        )
    await _db(audit_append)("kill_all.started", actor=actor, subject=f"account:{account}", payload={"reason": reason})
    # The broker's kill switch before: already on, it would refuse the exits (an alert says so).
    switch_before = await kill_switch_check(broker, expect=False, stage="before Kill All", account=account)

    # 1. Cancel everything that is not already a Kill All exit.
    live = await _db(
        lambda: list(
            Order.objects.filter(account=account, state__in=[Order.State.NEW, Order.State.OPEN, Order.State.PARTIAL])
            .exclude(purpose=Order.Purpose.KILL)
            .select_related("instrument")
        )
    )()
    cancelled = await asyncio.gather(*(oms.cancel(o, reason="Kill All") for o in live), return_exceptions=True)
    summary.cancelled = sum(1 for c in cancelled if isinstance(c, Order) and c.state == Order.State.CANCELLED)

    # 2. One exit per open position (sliced at the freeze quantity), all in the priority lane.
    legs = await _db(
        lambda: list(
            Position.objects.filter(account=account)
            .exclude(net_quantity=0)
            .select_related("instrument", "strategy", "signal")
        )
    )()
    summary.legs = len(legs)
    await report("cancelled")
    book = oms.book

    results = await asyncio.gather(
        *(exit_leg(oms, book, p, purpose=Order.Purpose.KILL, reason="Kill All") for p in legs),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, Exception):
            summary.errors.append(repr(result)[:200])
        else:
            summary.sent += len(result)
    summary.sent_s = round(time.monotonic() - began, 4)
    await report("sent")

    # 3. Confirm fills; re-price resting exits toward the touch until flat.
    while time.monotonic() - began < timeout_s:
        await broker.on_market_data()
        await oms.sync()
        resting = await _db(
            lambda: list(
                Order.objects.filter(
                    account=account, purpose=Order.Purpose.KILL, state__in=[Order.State.OPEN, Order.State.PARTIAL]
                ).select_related("instrument")
            )
        )()
        try:
            positions = await broker.positions()
        except Unavailable as exc:
            summary.errors.append(f"positions: {exc}")
            positions = None
        summary.filled = await _db(
            Order.objects.filter(account=account, purpose=Order.Purpose.KILL, state=Order.State.FILLED).count
        )()
        if positions == [] and not resting:
            summary.flat = True
            summary.flat_s = round(time.monotonic() - began, 4)
            break
        for order in resting:
            price = _exit_price(order.side, book.get(order.instrument.security_id) if book else None)
            if price is not None and price != order.limit_price:
                try:
                    await oms.reprice(order, price)
                except (OrderRefused, Rejected) as exc:
                    summary.errors.append(f"reprice {order.client_order_id}: {exc}")
        await report("working")
        await asyncio.sleep(0.05)

    # 4. Only when flat: the broker's kill switch.
    if summary.flat and activate_kill_switch:
        try:
            summary.kill_switch = await broker.kill_switch(True)
        except Rejected as exc:
            summary.errors.append(f"kill switch: {exc.message}")
    switch_after = await kill_switch_check(
        broker, expect=True if summary.kill_switch else None, stage="after Kill All", account=account
    )
    if switch_before is not None or switch_after is not None:
        summary.errors.extend([] if switch_after is not None else ["kill switch: status unknown after Kill All"])
    await _db(audit_append)("kill_all.finished", actor=actor, subject=f"account:{account}", payload=summary.as_dict())
    await report("done")
    log.warning("kill all finished", extra={"summary": summary.as_dict()})
    return summary


def book_from_storage(security_ids):
    """The last stored quote of each instrument: enough to price exits when the
    engine (and its live book) is down."""
    from marketdata.book import Quote, QuoteBook
    from marketdata.models import ChainQuote, LtpQuote

    book = QuoteBook()
    for sid in security_ids:
        row = (
            ChainQuote.objects.filter(security_id=sid, flags=0)
            .order_by("-received_at")
            .values_list("bid_paise", "ask_paise", "bid_qty", "ask_qty", "last_paise", "received_at")
            .first()
        )
        if row:
            book.set(Quote(sid, row[0] / 100, row[1] / 100, row[2], row[3], row[4] / 100, row[5]))
            continue
        tick = (
            LtpQuote.objects.filter(security_id=sid)
            .order_by("-received_at")
            .values_list("ltp_paise", "received_at")
            .first()
        )
        if tick:
            book.set(Quote(sid, tick[0] / 100 - 0.05, tick[0] / 100 + 0.05, 10_000, 10_000, tick[0] / 100, tick[1]))
    return book


def _standalone(account: str, positions):
    """A broker and an OMS of our own, pricing exits from the last stored quotes:
    Kill All and manual exits need no running engine."""
    from django.conf import settings

    from quanthub.clock import RealClock
    from risk.models import RiskLimits
    from trading.brokers import build_broker
    from trading.brokers.ratelimit import RateLimiter
    from trading.orders.manager import OrderManager

    ids = set(positions.values_list("instrument__security_id", flat=True))
    ids |= set(positions.values_list("instrument__underlying__security_id", flat=True))
    book = book_from_storage(ids)
    clock = RealClock()
    broker = build_broker(settings.QUANTHUB_BROKER, account=account, clock=clock, book=book)
    limits = RiskLimits.active()
    oms = OrderManager(
        broker,
        RateLimiter(rate=limits.order_rate_per_s, max_modifications=limits.max_modifications_per_order),
        account=account,
        clock=clock,
        book=book,
    )
    return broker, oms


def run_kill_all(actor: str, reason: str, account: str = "default", *, timeout_s: float = 15.0) -> KillAllSummary:
    """Kill All from anywhere (the dashboard, the admin, the API, ``manage.py kill_all``), engine or no engine."""
    broker, oms = _standalone(account, Position.objects.filter(account=account).exclude(net_quantity=0))

    async def go():
        try:
            return await kill_all(
                broker=broker, oms=oms, actor=actor, reason=reason, account=account, timeout_s=timeout_s
            )
        finally:
            await broker.close()

    return asyncio.run(go())


@dataclass
class ExitSummary:
    position: int
    instrument: str = ""
    sent: int = 0
    flat: bool = False
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


async def exit_position(
    *, broker, oms, position_id: int, actor: str, account: str = "default", timeout_s: float = 10.0
) -> ExitSummary:
    """Flatten one position: cancel its strategy's open orders on that instrument,
    send the exit (purpose EXIT, priority lane), re-price toward the touch until
    the position is flat or the time is up. The gate is not asked: an exit only
    ever reduces exposure, and HALTED still allows it."""
    began = time.monotonic()
    summary = ExitSummary(position=position_id)
    position = await _db(
        lambda: (
            Position.objects.select_related("instrument", "strategy", "signal")
            .filter(pk=position_id, account=account)
            .first()
        )
    )()
    if position is None or position.net_quantity == 0:
        summary.flat = True
        summary.errors.append("no open position")
        return summary
    summary.instrument = position.instrument.display
    await _db(audit_append)(
        "position.exit_requested",
        actor=actor,
        subject=f"position:{position_id}",
        payload={"instrument": position.instrument.security_id, "quantity": position.net_quantity},
    )
    live = await _db(
        lambda: list(
            Order.objects.filter(
                account=account,
                instrument_id=position.instrument_id,
                strategy_id=position.strategy_id,
                state__in=[Order.State.NEW, Order.State.OPEN, Order.State.PARTIAL],
            ).select_related("instrument")
        )
    )()
    await asyncio.gather(*(oms.cancel(o, reason=f"manual exit by {actor}") for o in live), return_exceptions=True)
    try:
        orders = await exit_leg(oms, oms.book, position, purpose=Order.Purpose.EXIT, reason=f"manual exit by {actor}")
        summary.sent = len(orders)
    except (OrderRefused, Rejected, Unavailable) as exc:
        summary.errors.append(str(exc)[:200])
        return summary
    ids = [o.pk for o in orders]
    while time.monotonic() - began < timeout_s:
        await broker.on_market_data()
        await oms.sync()
        resting = await _db(
            lambda: list(
                Order.objects.filter(pk__in=ids, state__in=[Order.State.OPEN, Order.State.PARTIAL]).select_related(
                    "instrument"
                )
            )
        )()
        left = await _db(
            lambda: Position.objects.filter(pk=position_id).values_list("net_quantity", flat=True).first()
        )()
        if not resting and not left:
            summary.flat = True
            break
        for order in resting:
            price = _exit_price(order.side, oms.book.get(order.instrument.security_id) if oms.book else None)
            if price is not None and price != order.limit_price:
                try:
                    await oms.reprice(order, price)
                except (OrderRefused, Rejected) as exc:
                    summary.errors.append(f"reprice {order.client_order_id}: {exc}")
        await asyncio.sleep(0.05)
    await _db(audit_append)(
        "position.exit_finished", actor=actor, subject=f"position:{position_id}", payload=summary.as_dict()
    )
    return summary


def run_exit_position(
    position_id: int, actor: str, account: str = "default", *, timeout_s: float = 10.0
) -> ExitSummary:
    """A manual exit from the dashboard or the API, engine or no engine."""
    broker, oms = _standalone(account, Position.objects.filter(pk=position_id, account=account))

    async def go():
        try:
            return await exit_position(
                broker=broker, oms=oms, position_id=position_id, actor=actor, account=account, timeout_s=timeout_s
            )
        finally:
            await broker.close()

    return asyncio.run(go())
