"""The composition root of the order path: broker + rate limiter + order manager for one account.

Everything that sends orders is built here — the engine, the standalone
flatten (Kill All or an exit with no engine running), the backtest runner and
the benchmarks — so every sender of an account is paced by the same kind of
limiter and records on the same clock. Live accounts share one rate window
across processes (``SharedRateLimiter``); a backtest's account is its own and
keeps an in-process window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings

from marketdata.book import Quote, QuoteBook
from marketdata.models import ChainQuote, Instrument, LtpQuote
from quanthub.clock import Clock
from risk.models import RiskLimits
from trading.brokers import build_broker
from trading.brokers.base import Broker
from trading.brokers.ratelimit import RateLimiter, SharedRateLimiter
from trading.orders.manager import OrderManager
from trading.timeline import _CarriedClock, account_clock  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


@dataclass
class OrderPath:
    """What sends orders for one account."""

    account: str
    broker: Broker
    limiter: RateLimiter
    oms: OrderManager
    clock: Clock
    book: QuoteBook

    async def close(self) -> None:
        await self.broker.close()


def build_order_path(
    account: str,
    *,
    clock: Clock,
    book: QuoteBook,
    broker: Broker | None = None,
    broker_name: str | None = None,
    limits: Callable[[], RiskLimits] | None = None,
    shared: bool = True,
    seed: int = 7,
    broker_options: dict | None = None,
) -> OrderPath:
    """Build (or wrap ``broker`` into) the order path of ``account``.

    ``limits``: returns the risk limits in force (the engine passes its cached
    copy, refreshed every snapshot); by default they are read once, now.
    ``shared``: pace by the account's window shared with every other sender
    (the live path); False for an account nothing else sends for (a backtest).
    """
    if limits is None:
        fixed = RiskLimits.active()

        def limits() -> RiskLimits:
            return fixed

    if broker is None:
        broker = build_broker(
            broker_name or settings.QUANTHUB_BROKER,
            account=account,
            clock=clock,
            book=book,
            seed=seed,
            **(broker_options or {}),
        )
    rate = lambda: limits().order_rate_per_s  # noqa: E731  (read at each send: an admin change applies at once)
    cap = lambda: limits().max_modifications_per_order  # noqa: E731
    limiter = (
        SharedRateLimiter(account, rate, max_modifications=cap) if shared else RateLimiter(rate, max_modifications=cap)
    )
    oms = OrderManager(broker, limiter, account=account, clock=clock, book=book, limits=limits)
    return OrderPath(account=account, broker=broker, limiter=limiter, oms=oms, clock=clock, book=book)


def stored_book(instruments) -> QuoteBook:
    """The last stored quote of each instrument (and its underlying): enough to price
    exits when the engine and its live book are not here."""
    book = QuoteBook()
    for instrument in instruments:
        for sid, tick in (
            (instrument.security_id, instrument.tick_size),
            (instrument.underlying.security_id, None),
        ):
            if sid in book:
                continue
            row = (
                ChainQuote.objects.filter(security_id=sid, flags=0)
                .order_by("-received_at")
                .values_list("bid_paise", "ask_paise", "bid_qty", "ask_qty", "last_paise", "received_at")
                .first()
            )
            if row:
                book.set(Quote(sid, row[0] / 100, row[1] / 100, row[2], row[3], row[4] / 100, row[5]))
                continue
            last = (
                LtpQuote.objects.filter(security_id=sid)
                .order_by("-received_at")
                .values_list("ltp_paise", "received_at")
                .first()
            )
            if last:
                # One tick either side of the last traded price (a locked book at it for an index).
                half = float(tick or 0)
                ltp = last[0] / 100
                book.set(Quote(sid, ltp - half, ltp + half, 10_000, 10_000, ltp, last[1]))
    return book


def standalone_path(account: str, instruments=None) -> OrderPath:
    """The order path for a flatten with no engine: the deployment's broker, the
    account's shared rate window, exits priced from the last stored quotes, the
    account's clock."""
    if instruments is None:
        instruments = Instrument.objects.filter(positions__account=account).select_related("underlying").distinct()
    book = stored_book(list(instruments))
    for instrument in instruments:
        book.ticks[instrument.security_id] = float(instrument.tick_size)
    return build_order_path(account, clock=account_clock(account), book=book, shared=True)
