"""The risk rules: small pure functions, each returning the same RiskDecision.

No ORM and no broker here: a rule sees the intent and a ``GateContext`` (built
by risk/context.py) and either passes the (possibly resized) lots on, or
refuses with its name and a reason. Exposure-reducing intents (exits) pass
every rule except a HALT: a risk limit must never stop you getting out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from decimal import Decimal

from marketdata.book import Quote
from quanthub.clock import IST, SESSION_CLOSE, SESSION_OPEN
from risk.slippage import check_slippage


@dataclass(frozen=True, slots=True)
class Limits:
    """A frozen copy of the active RiskLimits, read at each intent."""

    daily_loss_cap: Decimal = Decimal("25000")
    margin_utilisation_cap_pct: Decimal = Decimal("40")
    max_lots_per_signal: int = 10
    max_lots_per_strategy: int = 50
    max_hedge_lots_per_signal: int = 10
    hedge_margin_cap_pct: Decimal = Decimal("90")
    max_slippage_per_leg: Decimal = Decimal("0.30")
    max_spread_pct_of_mid: Decimal = Decimal("0.300")
    order_rate_per_s: int = 9
    entry_cutoff: dt.time = dt.time(15, 0)

    @classmethod
    def from_model(cls, limits) -> Limits:
        return cls(**{f.name: getattr(limits, f.name) for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class GateContext:
    now: dt.datetime
    trading_state: str = "ACTIVE"
    limits: Limits = field(default_factory=Limits)
    event_action: str | None = None  # NO_NEW_ENTRIES | REDUCE_ONLY | HALT
    feed_stale: bool = False
    lots_for_signal: int = 0  # option lots open and pending, this intent's signal
    lots_for_strategy: int = 0  # option lots open and pending, this intent's strategy
    hedge_lots_for_signal: int = 0  # futures lots open and pending that hedge this intent's signal
    margin_available: Decimal = Decimal("0")
    margin_utilised: Decimal = Decimal("0")
    margin_per_lot: Decimal = Decimal("0")
    daily_net_pnl: Decimal = Decimal("0")
    vix_breaker: bool = False
    lot_size: int = 1
    freeze_quantity: int = 1
    tick_size: Decimal = Decimal("0")  # the instrument's, from the master
    quote: Quote | None = None
    orders_last_second: int = 0


@dataclass(frozen=True, slots=True)
class RiskDecision:
    allowed: bool
    reason: str
    rule: str
    lots: int
    slices: tuple[int, ...] = ()  # quantities, each at most the freeze quantity

    @property
    def quantity(self) -> int:
        return sum(self.slices)


def _refuse(rule: str, reason: str) -> RiskDecision:
    return RiskDecision(False, reason, rule, 0)


Rule = Callable[[object, GateContext, int], RiskDecision | int]


def trading_state(intent, ctx: GateContext, lots: int):
    # HALTED refuses new exposure, never a way out: an exit only reduces a position.
    if ctx.trading_state == "HALTED" and not intent.reduces_exposure:
        return _refuse("trading_state", "trading is HALTED: only orders that reduce a position")
    if ctx.trading_state == "REDUCING" and not intent.reduces_exposure:
        return _refuse("trading_state", "trading is REDUCING: only exposure-reducing orders")
    return lots


def market_hours(intent, ctx: GateContext, lots: int):
    local = ctx.now.astimezone(IST)
    if local.weekday() >= 5 or not (SESSION_OPEN <= local.time() < SESSION_CLOSE):
        return _refuse("market_hours", f"outside market hours ({local:%H:%M:%S} IST; session 09:15–15:30)")
    if not intent.reduces_exposure and local.time() >= ctx.limits.entry_cutoff:
        return _refuse("market_hours", f"no new entries after {ctx.limits.entry_cutoff:%H:%M} IST")
    return lots


def event_day(intent, ctx: GateContext, lots: int):
    if ctx.event_action == "HALT":
        return _refuse("event_day", "event day: trading halted")
    if ctx.event_action in ("NO_NEW_ENTRIES", "REDUCE_ONLY") and not intent.reduces_exposure:
        return _refuse("event_day", f"event day: {ctx.event_action.replace('_', ' ').lower()}")
    return lots


def feed_health(intent, ctx: GateContext, lots: int):
    if ctx.feed_stale and not intent.reduces_exposure:
        return _refuse("feed_health", "market data is stale: no new entries")
    return lots


def daily_loss(intent, ctx: GateContext, lots: int):
    if not intent.reduces_exposure and ctx.daily_net_pnl <= -ctx.limits.daily_loss_cap:
        return _refuse(
            "daily_loss", f"daily net P&L ₹{ctx.daily_net_pnl} is past the cap of -₹{ctx.limits.daily_loss_cap}"
        )
    return lots


def vix_breaker(intent, ctx: GateContext, lots: int):
    if ctx.vix_breaker and not intent.reduces_exposure:
        return _refuse("vix_breaker", "India VIX breaker is tripped: only exposure-reducing orders")
    return lots


def is_hedge(intent) -> bool:
    return intent.purpose == "HEDGE"


def position_limits(intent, ctx: GateContext, lots: int):
    """Option lots count against lots per signal and per strategy; a hedge's futures
    lots count against their own per-signal limit only."""
    if intent.reduces_exposure:
        return lots
    if is_hedge(intent):
        room = ctx.limits.max_hedge_lots_per_signal - ctx.hedge_lots_for_signal
        if room <= 0:
            return _refuse("position_limits", f"{ctx.limits.max_hedge_lots_per_signal} hedge lots per signal reached")
        return min(lots, room)
    room = min(
        ctx.limits.max_lots_per_signal - ctx.lots_for_signal, ctx.limits.max_lots_per_strategy - ctx.lots_for_strategy
    )
    if room <= 0:
        which = "signal" if ctx.limits.max_lots_per_signal - ctx.lots_for_signal <= 0 else "strategy"
        limit = ctx.limits.max_lots_per_signal if which == "signal" else ctx.limits.max_lots_per_strategy
        return _refuse("position_limits", f"{limit} option lots per {which} reached")
    return min(lots, room)


def margin(intent, ctx: GateContext, lots: int):
    """Options may use margin up to the utilisation cap; a hedge, which lowers the
    signal's risk, has its own (higher) cap of the same total margin."""
    if intent.reduces_exposure or ctx.margin_per_lot <= 0:
        return lots
    cap_pct = ctx.limits.hedge_margin_cap_pct if is_hedge(intent) else ctx.limits.margin_utilisation_cap_pct
    base = ctx.margin_available + ctx.margin_utilised
    allowed = base * cap_pct / 100 - ctx.margin_utilised
    affordable = int(allowed // ctx.margin_per_lot) if allowed > 0 else 0
    if affordable <= 0:
        what = "hedge margin" if is_hedge(intent) else "margin use"
        return _refuse("margin", f"{what} would pass {cap_pct}% of available margin")
    return min(lots, affordable)


def slippage(intent, ctx: GateContext, lots: int):
    if intent.reduces_exposure:
        return lots
    verdict = check_slippage(intent.side, lots * ctx.lot_size, ctx.quote, ctx.limits, tick=ctx.tick_size)
    return lots if verdict.ok else _refuse("slippage", verdict.reason)


def order_rate(intent, ctx: GateContext, lots: int):
    if not intent.reduces_exposure and ctx.orders_last_second >= ctx.limits.order_rate_per_s:
        return _refuse("order_rate", f"order-rate budget of {ctx.limits.order_rate_per_s}/s is spent this second")
    return lots


RULES: tuple[Rule, ...] = (
    trading_state,
    market_hours,
    event_day,
    feed_health,
    daily_loss,
    vix_breaker,
    order_rate,
    position_limits,
    margin,
    slippage,
)


def freeze_slices(quantity: int, lot_size: int, freeze_quantity: int) -> tuple[int, ...]:
    """Split a quantity into orders of at most the freeze quantity, in whole lots."""
    largest = max(freeze_quantity // lot_size, 1) * lot_size
    full, rest = divmod(quantity, largest)
    return (largest,) * full + ((rest,) if rest else ())
