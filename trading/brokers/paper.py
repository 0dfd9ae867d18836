"""The paper broker: a fill simulator behind the same interface as Dhan.

It fills against the current top of book (``marketdata.book.QuoteBook``):
buys at the ask, sells at the bid, never more than the quoted size per quote,
so large orders fill partially and the rest rests until the book refreshes.
Market orders become limit orders with market price protection, as Dhan
treats them, so they can rest unfilled in a fast market. It rejects, with
Dhan-style codes, orders above the freeze quantity, off lot size, outside
the price band, without margin, or while the kill switch is on. The account
(orders, trades, positions, cash) lives in the database, so a restarted
engine sees the same book.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import random
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F

from marketdata.book import QuoteBook
from marketdata.models import Instrument
from marketdata.ticks import DOWN, UP, is_on_tick, to_tick
from quanthub.clock import Clock, RealClock
from quanthub.sql import Prepared
from trading import writes
from trading.brokers.base import (
    Broker,
    BrokerOrder,
    BrokerPosition,
    BrokerStatus,
    BrokerTrade,
    Funds,
    OrderType,
    PlaceRequest,
    Rejected,
    Side,
)
from trading.checkpoints import checkpoint
from trading.models import PaperAccount, PaperOrder, PaperPosition, PaperTrade

log = logging.getLogger(__name__)

OPEN_STATUSES = (BrokerStatus.PENDING, BrokerStatus.PART_TRADED)
MARKET_PROTECTION = Decimal("0.03")  # market orders become limits 3 % through the touch
PRICE_BAND = Decimal("0.40")  # limit prices further than this from the touch are refused
MIN_BAND = Decimal("5")
SPAN_OPTION_SHORT = Decimal("0.12")  # of underlying notional, SPAN + exposure, approximately
SPAN_FUTURE = Decimal("0.14")  # of future notional
MAX_MODIFICATIONS = 25  # Dhan's cap per order


@dataclass(frozen=True, slots=True)
class _FundsRows:
    """The database side of an account's funds, as read at ``read_at`` (``time.monotonic()``)."""

    version: int  # the account's version when read (``PaperBroker._changed``)
    read_at: float
    cash: Decimal
    blocked: Decimal  # margin blocked by open orders
    positions: tuple  # (spec, net quantity, average price) of each open position


@dataclass(frozen=True, slots=True)
class _Spec:
    security_id: str
    kind: str
    lot_size: int
    freeze_quantity: int
    underlying_security_id: str
    tick_size: Decimal  # from the instrument master, as the exchange checks it


# What ``PaperBroker._to_order`` reads of a paper order.
ORDER_BOOK_FIELDS = (
    "broker_order_id",
    "correlation_id",
    "security_id",
    "exchange_segment",
    "side",
    "order_type",
    "quantity",
    "price",
    "status",
    "filled_quantity",
    "average_price",
    "reject_code",
    "reason",
    "updated_at",
)


class PaperBroker(Broker):
    name = "paper"
    # Whether an account may have a resting order, as this process last saw it: every
    # place and modify (by any instance) sets it, a look at the database that finds
    # nothing resting clears it. Market data then costs no database trip while nothing
    # rests (most snapshots). An order another process placed is seen at the next look,
    # at most ``RECHECK_S`` of wall time later (only the standalone path does that,
    # and only while no engine holds the account).
    _may_rest: ClassVar[dict[str, bool]] = {}
    _looked: ClassVar[dict[str, float]] = {}
    RECHECK_S = 1.0
    # The funds' database side (cash, margin blocked by open orders, open positions) is
    # kept after a read and used again until the account changes: every write of an
    # instance in this process (a place, a fill, a modify, a cancel, the kill switch, a
    # new account) moves the account's version on, and the next funds read goes to the
    # database. Only an engine's own broker writes an account while that engine holds it
    # (the standalone path places orders only while no engine does); what another process
    # writes all the same is seen at most ``FUNDS_RECHECK_S`` of wall time later (twice
    # the engine's 5-second funds push, which keeps the read warm). The market side
    # (short options' margin on the underlying) is worked out from the live book at every
    # call, so kept funds equal freshly read ones. Placing an order always checks its
    # margin against funds read afresh.
    _funds_version: ClassVar[dict[str, int]] = {}
    FUNDS_RECHECK_S = 10.0

    def __init__(
        self,
        *,
        account: str = "default",
        clock: Clock | None = None,
        book: QuoteBook | None = None,
        seed: int = 7,
        latency_ms: tuple[float, float] = (0.0, 0.0),
        capital: Decimal | None = None,
    ):
        self.account = account
        self.clock = clock or RealClock()
        self.book = book or QuoteBook()
        self.latency_ms = latency_ms
        self._rng = random.Random(seed)  # noqa: S311 (a simulation, not security)
        self._capital = Decimal(capital if capital is not None else settings.QUANTHUB_PAPER_CAPITAL)
        self._specs: dict[str, _Spec] = {}
        self._ids = itertools.count(1)
        self._consumed: dict[tuple[str, dt.datetime, str], int] = {}
        self._any_resting: Prepared | None = None
        self._funds_rows: _FundsRows | None = None

    @classmethod
    def from_options(cls, *, account="default", clock=None, book=None, seed=7, **options) -> PaperBroker:
        known = {"latency_ms", "capital"}
        return cls(
            account=account, clock=clock, book=book, seed=seed, **{k: v for k, v in options.items() if k in known}
        )

    # --- helpers ------------------------------------------------------------------

    async def _latency(self) -> None:
        mean, jitter = self.latency_ms
        if mean > 0:
            await asyncio.sleep(max(self._rng.gauss(mean, jitter), 0.0) / 1000.0)

    def _spec(self, security_id: str) -> _Spec:
        spec = self._specs.get(security_id)
        if spec is None:
            row = (
                Instrument.objects.filter(security_id=security_id, is_active=True)
                .values_list("kind", "lot_size", "freeze_quantity", "underlying__security_id", "tick_size")
                .first()
            )
            if row is None:
                raise Rejected("DH-905", f"Unknown security id {security_id}")
            spec = _Spec(security_id, *row)
            self._specs[security_id] = spec
        return spec

    def know(self, instruments) -> None:
        """Trade these instruments even when the master no longer lists them as active
        (a backtest of expired contracts, or of a day whose master another day replaced)."""
        for i in instruments:
            self._specs[i.security_id] = _Spec(
                i.security_id, i.kind, i.lot_size, i.freeze_quantity, i.underlying.security_id, i.tick_size
            )

    def _account(self) -> PaperAccount:
        account, created = PaperAccount.objects.get_or_create(account=self.account, defaults={"cash": self._capital})
        if created:
            self._changed()
        return account

    def _changed(self) -> None:
        """The account's orders, positions or cash were written: funds are read again."""
        self._funds_version[self.account] = self._funds_version.get(self.account, 0) + 1

    def _new_id(self, prefix: str) -> str:
        # Unique across restarts and processes (a counter alone restarts at 1).
        return f"{prefix}{self.clock.now():%y%m%d}{secrets.token_hex(7).upper()}"

    @staticmethod
    def _to_order(o: PaperOrder) -> BrokerOrder:
        return BrokerOrder(
            broker_order_id=o.broker_order_id,
            correlation_id=o.correlation_id,
            security_id=o.security_id,
            exchange_segment=o.exchange_segment,
            side=Side(o.side),
            order_type=OrderType(o.order_type),
            quantity=o.quantity,
            price=o.price,
            status=BrokerStatus(o.status),
            filled_quantity=o.filled_quantity,
            average_price=o.average_price,
            reject_code=o.reject_code,
            reason=o.reason,
            updated_at=o.updated_at,
        )

    # --- margin -------------------------------------------------------------------

    def _margin_for(self, spec: _Spec, side: str, quantity: int, price: Decimal) -> Decimal:
        """Margin an order needs, net of what it closes."""
        position = PaperPosition.objects.filter(account=self.account, security_id=spec.security_id).first()
        held = position.net_quantity if position else 0
        signed = quantity if side == Side.BUY else -quantity
        closing = min(abs(signed), abs(held)) if held * signed < 0 else 0
        opening = abs(signed) - closing
        if opening == 0:
            return Decimal("0")
        if spec.kind == "FUT":
            return opening * price * SPAN_FUTURE
        if side == Side.BUY:
            return opening * price  # long option: the premium
        return opening * self._underlying_price(spec) * SPAN_OPTION_SHORT

    def _underlying_price(self, spec: _Spec) -> Decimal:
        quote = self.book.get(spec.underlying_security_id)
        return Decimal(str(quote.last)) if quote else Decimal("0")

    def _funds(self) -> Funds:
        """The account's funds, read from the database (and kept for ``funds``)."""
        version = self._funds_version.get(self.account, 0)
        account, created = PaperAccount.objects.get_or_create(account=self.account, defaults={"cash": self._capital})
        if created:  # the one write this read makes: what it reads includes it
            self._changed()
            version += 1
        blocked = sum(
            (o.margin_blocked for o in PaperOrder.objects.filter(account=self.account, status__in=OPEN_STATUSES)),
            Decimal("0"),
        )
        positions = tuple(
            (self._spec(p.security_id), p.net_quantity, p.average_price)
            for p in PaperPosition.objects.filter(account=self.account).exclude(net_quantity=0)
        )
        rows = _FundsRows(version, time.monotonic(), account.cash, blocked, positions)
        self._funds_rows = rows
        return self._funds_of(rows)

    def _keep_funds(self) -> None:
        """After the account's own write, its funds read again in the same trip to the
        database, so that the gate's next funds call needs none. A read that fails
        leaves the next call to read them."""
        if self._funds_rows is not None and self._funds_rows.version == self._funds_version.get(self.account, 0):
            return  # nothing written since the last read
        try:
            self._funds()
        except Exception:
            self._funds_rows = None
            log.warning("paper funds not read after a write", extra={"account": self.account}, exc_info=True)

    def _kept_funds(self) -> _FundsRows | None:
        """The funds' database side as last read, if nothing changed the account since."""
        rows = self._funds_rows
        if rows is None or rows.version != self._funds_version.get(self.account, 0):
            return None
        if time.monotonic() - rows.read_at >= self.FUNDS_RECHECK_S:
            return None
        return rows

    def _funds_of(self, rows: _FundsRows) -> Funds:
        utilised = rows.blocked
        for spec, net_quantity, average_price in rows.positions:
            notional = abs(net_quantity) * average_price
            if spec.kind == "FUT":
                utilised += notional * SPAN_FUTURE
            elif net_quantity > 0:
                utilised += notional  # premium paid is capital in use
            else:
                utilised += abs(net_quantity) * self._underlying_price(spec) * SPAN_OPTION_SHORT
        total = rows.cash + sum(
            (
                abs(net_quantity) * average_price
                for spec, net_quantity, average_price in rows.positions
                if net_quantity > 0 and spec.kind != "FUT"
            ),
            Decimal("0"),
        )
        available = total - utilised
        return Funds(
            available=available.quantize(Decimal("0.01")),
            utilised=utilised.quantize(Decimal("0.01")),
            total=total.quantize(Decimal("0.01")),
        )

    # --- the interface ------------------------------------------------------------

    async def place_order(self, request: PlaceRequest) -> BrokerOrder:
        await self._latency()
        return await sync_to_async(self._place, thread_sensitive=True)(request)

    def _place(self, request: PlaceRequest) -> BrokerOrder:
        account = self._account()
        if account.kill_switch_active:
            raise Rejected("DH-906", "Kill switch is active for this account")
        spec = self._spec(request.security_id)
        if request.quantity <= 0 or request.quantity % spec.lot_size:
            raise Rejected("DH-905", f"Quantity {request.quantity} is not a multiple of the lot size {spec.lot_size}")
        if request.quantity > spec.freeze_quantity:
            raise Rejected("DH-906", f"Quantity {request.quantity} exceeds the freeze quantity {spec.freeze_quantity}")
        quote = self.book.get(request.security_id)
        if quote is None:
            raise Rejected("DH-906", "No market for this instrument")
        touch = Decimal(str(quote.ask if request.side == Side.BUY else quote.bid))
        if request.order_type == OrderType.MARKET:
            price = (
                to_tick(touch * (1 + MARKET_PROTECTION), spec.tick_size, UP)
                if request.side == Side.BUY
                else max(to_tick(touch * (1 - MARKET_PROTECTION), spec.tick_size, DOWN), spec.tick_size)
            )
        else:
            if request.price is None or request.price <= 0:
                raise Rejected("DH-905", "A limit order needs a positive price")
            price = request.price
            if not is_on_tick(price, spec.tick_size):
                raise Rejected("DH-905", f"Price {price} is not on the ₹{spec.tick_size} tick")
        band = max(touch * PRICE_BAND, MIN_BAND)
        if abs(price - touch) > band:
            raise Rejected("DH-906", f"Price {price} is outside the price band around {touch}")
        margin = self._margin_for(spec, request.side, request.quantity, price)
        funds = self._funds()
        if margin > funds.available:
            raise Rejected("DH-906", f"Insufficient margin: needs ₹{margin:.2f}, available ₹{funds.available:.2f}")
        now = self.clock.now()
        order = PaperOrder(
            account=self.account,
            broker_order_id=self._new_id("P"),
            correlation_id=request.correlation_id,
            security_id=request.security_id,
            exchange_segment=request.exchange_segment,
            side=request.side,
            order_type=OrderType.LIMIT,
            quantity=request.quantity,
            price=price,
            status=BrokerStatus.PENDING,
            margin_blocked=margin,
            created_at=now,
            updated_at=now,
        )
        checkpoint("broker.before_commit")
        self._may_have_resting()
        if PaperOrder.objects.filter(correlation_id=request.correlation_id).exists():
            raise Rejected("DH-906", f"Duplicate correlation id {request.correlation_id}")
        try:
            with transaction.atomic():
                order.save()
        except IntegrityError:
            # Two requests with one correlation id raced; the first one won.
            raise Rejected("DH-906", f"Duplicate correlation id {request.correlation_id}") from None
        finally:
            self._changed()  # its margin is blocked
        checkpoint("broker.after_commit")
        self._match(order)
        order.refresh_from_db()
        self._keep_funds()
        return self._to_order(order)

    def _match(self, order: PaperOrder) -> None:
        """Fill what the current quote allows; each quote's size is consumed once."""
        quote = self.book.get(order.security_id)
        remaining = order.quantity - order.filled_quantity
        if quote is None or remaining <= 0:
            return
        if order.side == Side.BUY:
            touch, size = Decimal(str(quote.ask)), int(quote.ask_qty)
            crosses = order.price >= touch
        else:
            touch, size = Decimal(str(quote.bid)), int(quote.bid_qty)
            crosses = order.price <= touch
        if not crosses or touch <= 0:
            return
        key = (order.security_id, quote.at, order.side)
        available = size - self._consumed.get(key, 0)
        spec = self._spec(order.security_id)
        quantity = min(remaining, available) // spec.lot_size * spec.lot_size
        if quantity <= 0:
            return
        self._consumed[key] = self._consumed.get(key, 0) + quantity
        checkpoint("broker.before_fill")
        self._fill(order, quantity, touch)

    def _fill(self, order: PaperOrder, quantity: int, price: Decimal) -> None:
        try:
            self._book_fill(order, quantity, price)
        finally:
            self._changed()  # margin released, a position and cash moved

    def _book_fill(self, order: PaperOrder, quantity: int, price: Decimal) -> None:
        now = self.clock.now()
        with transaction.atomic():
            locked = PaperOrder.objects.select_for_update().get(pk=order.pk)
            if locked.status not in OPEN_STATUSES:
                return
            filled = locked.filled_quantity + quantity
            average = ((locked.average_price or Decimal("0")) * locked.filled_quantity + price * quantity) / filled
            status = BrokerStatus.TRADED if filled == locked.quantity else BrokerStatus.PART_TRADED
            spec = self._spec(locked.security_id)
            blocked = locked.margin_blocked * (locked.quantity - filled) / locked.quantity
            PaperOrder.objects.filter(pk=locked.pk).update(
                filled_quantity=filled,
                average_price=average.quantize(Decimal("0.0001")),
                status=status,
                updated_at=now,
                margin_blocked=blocked.quantize(Decimal("0.01")),
            )
            PaperTrade.objects.create(
                order=locked, trade_id=self._new_id("T"), quantity=quantity, price=price, traded_at=now
            )
            self._book_position(locked, spec, quantity, price)

    def _book_position(self, order: PaperOrder, spec: _Spec, quantity: int, price: Decimal) -> None:
        position, _ = PaperPosition.objects.select_for_update().get_or_create(
            account=self.account, exchange_segment=order.exchange_segment, security_id=order.security_id
        )
        signed = quantity if order.side == Side.BUY else -quantity
        held = position.net_quantity
        realised = Decimal("0")
        if held * signed < 0:  # closing (part of) the position
            closing = min(abs(signed), abs(held))
            direction = 1 if held > 0 else -1
            realised = (price - position.average_price) * closing * direction
            new_qty = held + signed
            if new_qty * held < 0:  # flipped through zero
                position.average_price = price
            elif new_qty == 0:
                position.average_price = Decimal("0")
        else:
            new_qty = held + signed
            position.average_price = (position.average_price * abs(held) + price * abs(signed)) / abs(new_qty)
        position.net_quantity = new_qty
        position.realised_pnl += realised
        position.average_price = position.average_price.quantize(Decimal("0.0001"))
        position.save()
        # Cash: option premium changes hands; futures settle only realised P&L.
        cash_change = realised if spec.kind == "FUT" else -price * signed
        PaperAccount.objects.filter(account=self.account).update(
            cash=F("cash") + cash_change, realised_pnl=F("realised_pnl") + realised
        )

    def _may_have_resting(self) -> None:
        self._may_rest[self.account] = True

    async def on_market_data(self) -> None:
        account = self.account
        if not self._may_rest.get(account, True) and time.monotonic() - self._looked.get(account, 0) < self.RECHECK_S:
            return
        await sync_to_async(self._match_resting, thread_sensitive=True)()

    def _match_resting(self) -> None:
        resting = PaperOrder.objects.filter(account=self.account, status__in=OPEN_STATUSES)
        # Called at every snapshot, and mostly nothing rests: a one-column check first.
        if self._any_resting is None:
            self._any_resting = Prepared(resting.values_list("pk")[:1])
        self._looked[self.account] = time.monotonic()
        # Cleared before the look: a place on another thread meanwhile sets it again.
        self._may_rest[self.account] = False
        if not self._any_resting.exists():
            return
        self._may_rest[self.account] = True
        for order in resting.order_by("created_at"):
            self._match(order)
        self._keep_funds()

    async def modify_order(
        self, broker_order_id: str, *, price: Decimal | None = None, quantity: int | None = None
    ) -> BrokerOrder:
        await self._latency()
        return await sync_to_async(self._modify, thread_sensitive=True)(broker_order_id, price, quantity)

    def _locked_open_order(self, broker_order_id: str) -> PaperOrder:
        """The order, row-locked, if it is still open (call inside a transaction)."""
        order = (
            PaperOrder.objects.select_for_update().filter(account=self.account, broker_order_id=broker_order_id).first()
        )
        if order is None:
            raise Rejected("DH-906", f"No order {broker_order_id}")
        if order.status not in OPEN_STATUSES:
            raise Rejected("DH-906", f"Order {broker_order_id} is {order.status}, not open")
        return order

    def _modify(self, broker_order_id: str, price: Decimal | None, quantity: int | None) -> BrokerOrder:
        with transaction.atomic():
            order = self._locked_open_order(broker_order_id)
            if order.modifications >= MAX_MODIFICATIONS:
                raise Rejected("DH-906", f"Order {broker_order_id} reached {MAX_MODIFICATIONS} modifications")
            if price is not None:
                if price <= 0 or not is_on_tick(price, self._spec(order.security_id).tick_size):
                    raise Rejected("DH-905", f"Price {price} is not a positive price on the tick")
                order.price = price
            if quantity is not None:
                spec = self._spec(order.security_id)
                if quantity < order.filled_quantity or quantity % spec.lot_size or quantity > spec.freeze_quantity:
                    raise Rejected("DH-905", f"Quantity {quantity} is not valid for this order")
                order.quantity = quantity
            order.modifications += 1
            order.updated_at = self.clock.now()
            order.save()
            self._may_have_resting()
        self._changed()
        self._match(order)
        order.refresh_from_db()
        self._keep_funds()
        return self._to_order(order)

    async def cancel_order(self, broker_order_id: str) -> BrokerOrder:
        await self._latency()
        return await sync_to_async(self._cancel, thread_sensitive=True)(broker_order_id)

    def _cancel(self, broker_order_id: str) -> BrokerOrder:
        with transaction.atomic():
            order = self._locked_open_order(broker_order_id)
            PaperOrder.objects.filter(pk=order.pk).update(
                status=BrokerStatus.CANCELLED, margin_blocked=0, updated_at=self.clock.now()
            )
        self._changed()  # its margin is released
        order.refresh_from_db()
        self._keep_funds()
        return self._to_order(order)

    async def get_order(self, broker_order_id: str) -> BrokerOrder:
        def get():
            order = PaperOrder.objects.filter(account=self.account, broker_order_id=broker_order_id).first()
            if order is None:
                raise Rejected("DH-906", f"No order {broker_order_id}")
            return self._to_order(order)

        return await sync_to_async(get, thread_sensitive=True)()

    async def get_order_by_correlation(self, correlation_id: str) -> BrokerOrder | None:
        def get():
            order = PaperOrder.objects.filter(account=self.account, correlation_id=correlation_id).first()
            return None if order is None else self._to_order(order)

        return await sync_to_async(get, thread_sensitive=True)()

    @property
    def book_tables(self) -> tuple[str, ...] | None:
        """The paper books' tables, unless this broker's books are reported some other way
        (a subclass or a patched instance): then reconciliation always asks it."""
        reports = ("order_book", "trade_book", "positions")
        if any(name in vars(self) or getattr(type(self), name) is not getattr(PaperBroker, name) for name in reports):
            return None
        return writes.PAPER_BOOKS

    async def order_book(self) -> list[BrokerOrder]:
        def get():
            # The fields of the book, not whole rows: reconciliation reads it every 30 s.
            rows = PaperOrder.objects.filter(account=self.account).values_list(*ORDER_BOOK_FIELDS, named=True)
            return [self._to_order(o) for o in rows]

        return await sync_to_async(get, thread_sensitive=True)()

    async def trade_book(self) -> list[BrokerTrade]:
        def get():
            rows = PaperTrade.objects.filter(order__account=self.account).values_list(
                "trade_id",
                "order__broker_order_id",
                "order__correlation_id",
                "order__security_id",
                "order__exchange_segment",
                "order__side",
                "quantity",
                "price",
                "traded_at",
            )
            return [
                BrokerTrade(
                    trade_id=trade_id,
                    broker_order_id=broker_order_id,
                    correlation_id=correlation_id,
                    security_id=security_id,
                    exchange_segment=segment,
                    side=Side(side),
                    quantity=quantity,
                    price=price,
                    traded_at=traded_at,
                )
                for trade_id, broker_order_id, correlation_id, security_id, segment, side, quantity, price, traded_at in rows
            ]

        return await sync_to_async(get, thread_sensitive=True)()

    async def positions(self) -> list[BrokerPosition]:
        def get():
            rows = (
                PaperPosition.objects.filter(account=self.account)
                .exclude(net_quantity=0)
                .values_list("security_id", "exchange_segment", "net_quantity", "average_price", "realised_pnl")
            )
            return [BrokerPosition(*row) for row in rows]

        return await sync_to_async(get, thread_sensitive=True)()

    async def funds(self) -> Funds:
        rows = self._kept_funds()
        if rows is not None:  # nothing changed the account since the last read: no database trip
            return self._funds_of(rows)
        return await sync_to_async(self._funds, thread_sensitive=True)()

    async def kill_switch(self, activate: bool = True) -> bool:
        def switch():
            if activate:
                if PaperOrder.objects.filter(account=self.account, status__in=OPEN_STATUSES).exists():
                    raise Rejected("DH-906", "Kill switch needs no pending orders")
                if PaperPosition.objects.filter(account=self.account).exclude(net_quantity=0).exists():
                    raise Rejected("DH-906", "Kill switch needs no open positions")
            self._account()
            PaperAccount.objects.filter(account=self.account).update(kill_switch_active=activate)
            self._changed()
            self._keep_funds()
            return activate

        return await sync_to_async(switch, thread_sensitive=True)()
