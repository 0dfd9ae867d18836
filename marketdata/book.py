"""The current top of book per contract, fed by the engine from each snapshot.

The paper broker fills against it; the gate's slippage and spread rule and
the strategy's pricing read it. Plain dict lookups: it is on the hot path.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from marketdata.feeds.base import ChainSnapshot, LtpTick, QuoteSnapshot


@dataclass(frozen=True, slots=True)
class Quote:
    security_id: str
    bid: float
    ask: float
    bid_qty: int
    ask_qty: int
    last: float
    at: dt.datetime

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2.0

    @property
    def spread(self) -> float:
        return self.ask - self.bid


def _quote_maker():
    """``Quote(...)`` for the book's hot loops at half the cost: a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``; this sets the slots
    directly. The result is the same immutable ``Quote``."""
    new = object.__new__
    slots = Quote.__dict__
    s_sid, s_bid, s_ask, s_bq, s_aq, s_last, s_at = (
        slots[name].__set__ for name in ("security_id", "bid", "ask", "bid_qty", "ask_qty", "last", "at")
    )

    def make(security_id, bid, ask, bid_qty, ask_qty, last, at) -> Quote:
        quote = new(Quote)
        s_sid(quote, security_id)
        s_bid(quote, bid)
        s_ask(quote, ask)
        s_bq(quote, bid_qty)
        s_aq(quote, ask_qty)
        s_last(quote, last)
        s_at(quote, at)
        return quote

    return make


_make_quote = _quote_maker()


class QuoteBook:
    def __init__(self) -> None:
        self._quotes: dict[str, Quote] = {}
        # Security id → tick (rupees, from the instrument master): the width of the
        # synthetic one-tick book put around an LTP when no depth is known.
        self.ticks: dict[str, float] = {}

    def update_chain(self, snapshot: ChainSnapshot) -> None:
        at = snapshot.exchange_time
        quotes = self._quotes
        make = _make_quote
        # Whole columns to Python values at once: indexing numpy element by element
        # cost more than building the quotes.
        columns = zip(
            (snapshot.flags == 0).tolist(),
            snapshot.security_id.tolist(),
            snapshot.bid.tolist(),
            snapshot.ask.tolist(),
            snapshot.bid_qty.tolist(),
            snapshot.ask_qty.tolist(),
            snapshot.last_price.tolist(),
            strict=True,
        )
        for good, sid, bid, ask, bq, aq, last in columns:
            if good:
                quotes[sid] = make(sid, bid, ask, bq, aq, last, at)

    def update_quotes(self, quotes: QuoteSnapshot) -> None:
        """One-second top of book of the candidate contracts (fresher than the last chain)."""
        at = quotes.exchange_time
        book = self._quotes
        make = _make_quote
        for sid, bid, ask, bq, aq in zip(
            quotes.security_id.tolist(),
            quotes.bid.tolist(),
            quotes.ask.tolist(),
            quotes.bid_qty.tolist(),
            quotes.ask_qty.tolist(),
            strict=True,
        ):
            if bid > 0 and ask >= bid:
                existing = book.get(sid)
                book[sid] = make(sid, bid, ask, bq, aq, existing.last if existing else (bid + ask) / 2, at)

    def update_ltp(self, tick: LtpTick, half_spread: float | None = None) -> None:
        """Futures and indices get a synthetic one-tick book around the LTP when no depth is known
        (one tick either side, the tick from ``ticks``; a locked book at the LTP when unknown)."""
        existing = self._quotes.get(tick.security_id)
        if existing is not None and existing.bid < existing.ask and existing.at >= tick.exchange_time:
            return
        if tick.bid > 0 and tick.ask >= tick.bid:  # a quote from the market feed: its own book
            self._quotes[tick.security_id] = Quote(
                tick.security_id, tick.bid, tick.ask, tick.bid_qty, tick.ask_qty, tick.ltp, tick.exchange_time
            )
            return
        if half_spread is None:
            half_spread = self.ticks.get(tick.security_id, 0.0)
        self._quotes[tick.security_id] = Quote(
            tick.security_id,
            tick.ltp - half_spread,
            tick.ltp + half_spread,
            10_000,
            10_000,
            tick.ltp,
            tick.exchange_time,
        )

    def set(self, quote: Quote) -> None:
        self._quotes[quote.security_id] = quote

    def get(self, security_id: str) -> Quote | None:
        return self._quotes.get(security_id)

    def __contains__(self, security_id: str) -> bool:
        return security_id in self._quotes
