"""Building the gate's context from the database, once per intent.

A handful of indexed queries: the active limits (so an admin change applies
to the next intent), the trading state, today's event days, the lots open and
pending for the intent's signal and strategy, today's net P&L, and the VIX
breaker. Runtime facts the engine already holds — funds, the quote, feed
health, the order rate — are passed in.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from django.db.models import F, Sum

from marketdata.book import Quote
from quanthub.clock import IST
from risk.checks import GateContext, Limits
from risk.models import BreakerTrip, EventDay, RiskLimits, TradingState
from trading.brokers.base import Funds
from trading.models import Order, Position, Trade

SEVERITY = {"HALT": 3, "REDUCE_ONLY": 2, "NO_NEW_ENTRIES": 1}
SHORT_OPTION_MARGIN = Decimal("0.12")
FUTURE_MARGIN = Decimal("0.14")
LIVE = (Order.State.NEW, Order.State.SUBMITTING, Order.State.OPEN, Order.State.PARTIAL, Order.State.UNKNOWN)


def _lots(quantity: int | None, lot_size: int) -> int:
    return -(-abs(quantity or 0) // lot_size) if lot_size else 0


def open_lots(*, account: str, lot_size_of, strategy_key: str | None = None, signal_key: str | None = None) -> int:
    """Lots held plus lots in live entry orders, for a signal or a strategy."""
    positions = Position.objects.filter(account=account).exclude(net_quantity=0).select_related("instrument")
    orders = Order.objects.filter(
        account=account, state__in=LIVE, purpose__in=[Order.Purpose.ENTRY, Order.Purpose.SCALE]
    ).select_related("instrument")
    if signal_key:
        positions, orders = positions.filter(signal__key=signal_key), orders.filter(signal__key=signal_key)
    elif strategy_key:
        positions = positions.filter(strategy__key=strategy_key)
        orders = orders.filter(strategy__key=strategy_key)
    held = sum(_lots(p.net_quantity, lot_size_of(p.instrument)) for p in positions)
    pending = sum(_lots(o.quantity - o.filled_quantity, lot_size_of(o.instrument)) for o in orders)
    return held + pending


def daily_net_pnl(account: str, now: dt.datetime) -> Decimal:
    start = dt.datetime.combine(now.astimezone(IST).date(), dt.time(0), tzinfo=IST)
    closed = Trade.objects.filter(account=account, closed_at__gte=start).aggregate(n=Sum("net_pnl"))["n"] or 0
    open_ = (
        Position.objects.filter(account=account, opened_at__gte=start)
        .exclude(net_quantity=0)
        .aggregate(n=Sum(F("realised_pnl") + F("unrealised_pnl") - F("charges")))["n"]
        or 0
    )
    return Decimal(closed) + Decimal(open_)


def margin_per_lot(instrument, side: str, quote: Quote | None, underlying_price: float | None) -> Decimal:
    price = Decimal(str(quote.ask if side == "BUY" else quote.bid)) if quote else Decimal("0")
    if instrument.kind == "FUT":
        return price * instrument.lot_size * FUTURE_MARGIN
    if side == "BUY":
        return price * instrument.lot_size
    return Decimal(str(underlying_price or 0)) * instrument.lot_size * SHORT_OPTION_MARGIN


def build_context(
    intent,
    *,
    instrument,
    now: dt.datetime,
    funds: Funds | None = None,
    quote: Quote | None = None,
    underlying_price: float | None = None,
    feed_stale: bool = False,
    orders_last_second: int = 0,
    account: str = "default",
) -> GateContext:
    limits = Limits.from_model(RiskLimits.active())
    state = TradingState.objects.filter(account=account).values_list("state", flat=True).first() or "ACTIVE"
    actions = EventDay.objects.filter(date=now.astimezone(IST).date()).values_list("action", flat=True)
    event_action = max(actions, key=lambda a: SEVERITY.get(a, 0), default=None)

    def lot_size_of(inst):
        return inst.lot_size

    return GateContext(
        now=now,
        trading_state=state,
        limits=limits,
        event_action=event_action,
        feed_stale=feed_stale,
        lots_for_signal=open_lots(account=account, lot_size_of=lot_size_of, signal_key=intent.signal_key)
        if intent.signal_key
        else 0,
        lots_for_strategy=open_lots(account=account, lot_size_of=lot_size_of, strategy_key=intent.strategy_key)
        if intent.strategy_key
        else 0,
        margin_available=funds.available if funds else Decimal("0"),
        margin_utilised=funds.utilised if funds else Decimal("0"),
        margin_per_lot=margin_per_lot(instrument, intent.side, quote, underlying_price) if funds else Decimal("0"),
        daily_net_pnl=daily_net_pnl(account, now),
        vix_breaker=BreakerTrip.objects.filter(account=account, breaker="vix", cleared_at__isnull=True).exists(),
        lot_size=instrument.lot_size,
        freeze_quantity=instrument.freeze_quantity,
        quote=quote,
        orders_last_second=orders_last_second,
    )
