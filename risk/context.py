"""Building the gate's context from the database.

``GateBasis.load`` reads, in one go, what the gate needs from the database:
the active limits, the trading state, today's event days, the lots open and
pending per signal and per strategy, today's net P&L and the VIX breaker.
The engine makes one basis per snapshot (at the first intent, from what it
holds when it can: ``BasisReads``) and ``GateBasis.record`` adds each passed
intent's lots and margin to it, so the next intent of the same snapshot sees
them. Runtime facts the engine already
holds — funds, the quote, feed health, the order rate — are passed in.
``build_context`` is the one-intent form (a fresh basis per call).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field, replace
from decimal import Context, Decimal

from django.db import connection

from marketdata.book import Quote
from quanthub.clock import IST
from quanthub.sql import Prepared
from risk.checks import GateContext, Limits
from risk.models import BreakerTrip, EventDay, RiskLimits, TradingState
from trading.brokers.base import Funds
from trading.models import Order, Position, Trade

SEVERITY = {"HALT": 3, "REDUCE_ONLY": 2, "NO_NEW_ENTRIES": 1}
SHORT_OPTION_MARGIN = Decimal("0.12")
FUTURE_MARGIN = Decimal("0.14")
CENT = Decimal("0.01")
_FLOAT_CONTEXT = Context(prec=15)  # what Django uses for DecimalField values read from SQLite
LIVE = (Order.State.NEW, Order.State.SUBMITTING, Order.State.OPEN, Order.State.PARTIAL, Order.State.UNKNOWN)


def _lots(quantity: int | None, lot_size: int) -> int:
    return -(-abs(quantity or 0) // lot_size) if lot_size else 0


def open_lots(*, account: str, lot_size_of, strategy_key: str | None = None, signal_key: str | None = None) -> int:
    """Option lots held plus option lots in live entry orders, for a signal or a
    strategy (hedges, in futures, have their own limit)."""
    positions = (
        Position.objects.filter(account=account)
        .exclude(net_quantity=0)
        .exclude(instrument__kind="FUT")
        .select_related("instrument")
    )
    orders = (
        Order.objects.filter(account=account, state__in=LIVE, purpose__in=[Order.Purpose.ENTRY, Order.Purpose.SCALE])
        .exclude(instrument__kind="FUT")
        .select_related("instrument")
    )
    if signal_key:
        positions, orders = positions.filter(signal__key=signal_key), orders.filter(signal__key=signal_key)
    elif strategy_key:
        positions = positions.filter(strategy__key=strategy_key)
        orders = orders.filter(strategy__key=strategy_key)
    held = sum(_lots(p.net_quantity, lot_size_of(p.instrument)) for p in positions)
    pending = sum(_lots(o.quantity - o.filled_quantity, lot_size_of(o.instrument)) for o in orders)
    return held + pending


_DAILY_PNL_SQL = (
    "SELECT (SELECT SUM({net_pnl}) FROM {trade} WHERE {account} = %s AND {closed_at} >= %s), "
    "(SELECT SUM({realised_pnl} + {unrealised_pnl} - {charges}) FROM {position} "
    "WHERE {account} = %s AND {opened_at} >= %s AND {net_quantity} <> 0)"
)
_ANY_LIVE_SQL = "EXISTS (SELECT 1 FROM {order} WHERE {account} = %s AND {state} IN ({states}))"


def daily_net_pnl(account: str, now: dt.datetime) -> Decimal:
    """Today's closed trades' net P&L plus today's open positions' (realised +
    unrealised − charges).

    One statement, written out: the engine asks every second, and compiling
    the two ORM aggregates cost far more than running them. The sums are
    converted exactly as the ORM converts a DecimalField sum.
    """
    closed, open_ = _daily_pnl_row(account, now)
    return _money(closed) + _money(open_)


def daily_pnl_parts_and_any_live(account: str, now: dt.datetime, live_states) -> tuple[Decimal, Decimal, bool]:
    """``daily_net_pnl`` in its two parts, today's closed trades' and today's open
    positions' (``open_positions_pnl``), and whether any of the account's orders is in
    ``live_states``, in one statement: the engine's question of every second, one trip
    to the database."""
    live_states = tuple(live_states)
    row = _daily_pnl_row(account, now, live_states)
    return _money(row[0]), _money(row[1]), bool(live_states and row[2])


def open_positions_pnl(positions, now: dt.datetime) -> Decimal:
    """Today's open positions' part of ``daily_net_pnl``, from rows in memory: the
    positions opened since the day's midnight (IST) and not flat, realised +
    unrealised − charges, summed as the statement sums them.

    Equal to the statement's figure for the same rows on both databases: the columns
    are whole paise, which PostgreSQL sums exactly and SQLite sums in floating point
    within far less than half a paisa of the exact sum for any figure below ₹10^9,
    which ``_money`` then rounds to the same paise.
    """
    start = dt.datetime.combine(now.astimezone(IST).date(), dt.time(0), tzinfo=IST)
    total = None  # no row: the statement's SUM is NULL, which ``_money`` reads as 0
    for p in positions:
        if p.net_quantity and p.opened_at is not None and p.opened_at >= start:
            total = (total or 0) + p.realised_pnl + p.unrealised_pnl - p.charges
    return _money(total)


def _daily_pnl_row(account: str, now: dt.datetime, live_states: tuple[str, ...] = ()) -> tuple:
    vendor = connection.vendor
    sql = _PNL_SQL.get((vendor, len(live_states)))
    if sql is None:
        sql = _PNL_SQL[(vendor, len(live_states))] = _pnl_sql(len(live_states))
    day = now.astimezone(IST).date()
    at = _DAY_START.get((vendor, day))
    if at is None:  # the day's midnight as the database takes it, adapted once a day
        if len(_DAY_START) > 64:
            _DAY_START.clear()
        start = dt.datetime.combine(day, dt.time(0), tzinfo=IST)
        at = _DAY_START[(vendor, day)] = connection.ops.adapt_datetimefield_value(start)
    params = [account, at, account, at]
    if live_states:
        params += [account, *live_states]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone()


# The statement per (database vendor, number of live states) and the day's start per
# (vendor, day): the engine asks every second, and building them cost more than the query.
_PNL_SQL: dict[tuple[str, int], str] = {}
_DAY_START: dict[tuple[str, dt.date], object] = {}


def _pnl_sql(live_states: int) -> str:
    q = connection.ops.quote_name
    names = {"trade": q(Trade._meta.db_table), "position": q(Position._meta.db_table)}
    for model, columns in (
        (Trade, ("net_pnl", "account", "closed_at")),
        (Position, ("realised_pnl", "unrealised_pnl", "charges", "opened_at", "net_quantity")),
    ):
        names.update({c: q(model._meta.get_field(c).column) for c in columns})
    sql = _DAILY_PNL_SQL.format(**names)  # identifiers from the models; values are parameters
    if live_states:
        order = {"order": q(Order._meta.db_table)}
        order.update({c: q(Order._meta.get_field(c).column) for c in ("account", "state")})
        sql += ", " + _ANY_LIVE_SQL.format(**order, states=", ".join(["%s"] * live_states))
    return sql


def _money(value) -> Decimal:
    if value is None:
        return Decimal("0")
    if isinstance(value, float):  # SQLite keeps decimals as REAL: the ORM's own conversion
        return _FLOAT_CONTEXT.create_decimal_from_float(value).quantize(CENT)
    return Decimal(value).quantize(CENT)


def margin_per_lot(instrument, side: str, quote: Quote | None, underlying_price: float | None) -> Decimal:
    price = Decimal(str(quote.ask if side == "BUY" else quote.bid)) if quote else Decimal("0")
    if instrument.kind == "FUT":
        return price * instrument.lot_size * FUTURE_MARGIN
    if side == "BUY":
        return price * instrument.lot_size
    return Decimal(str(underlying_price or 0)) * instrument.lot_size * SHORT_OPTION_MARGIN


_PREPARED: dict[tuple, Prepared] = {}


def _prepared(key: tuple, build) -> Prepared:
    """The basis's queries, compiled once per account (and day): all of them return
    states, counts, keys and ids, never money."""
    key = (connection.vendor, *key)
    prepared = _PREPARED.get(key)
    if prepared is None:
        prepared = _PREPARED[key] = Prepared(build())
    return prepared


def _lots_by_key(account: str) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """``open_lots`` for every signal and strategy at once: two queries.

    Returns option lots by signal, option lots by strategy and hedge (futures)
    lots by signal: a hedge has its own limit and never uses up option room.
    """
    by_signal: dict[str, int] = defaultdict(int)
    by_strategy: dict[str, int] = defaultdict(int)
    hedges: dict[str, int] = defaultdict(int)
    positions = _prepared(
        ("positions", account),
        lambda: (
            Position.objects.filter(account=account)
            .exclude(net_quantity=0)
            .values_list("net_quantity", "instrument__lot_size", "instrument__kind", "signal__key", "strategy__key")
        ),
    )
    orders = _prepared(
        ("orders", account),
        lambda: Order.objects.filter(
            account=account,
            state__in=LIVE,
            purpose__in=[Order.Purpose.ENTRY, Order.Purpose.SCALE, Order.Purpose.HEDGE],
        ).values_list(
            "quantity", "filled_quantity", "instrument__lot_size", "instrument__kind", "signal__key", "strategy__key"
        ),
    )
    rows = [(_lots(q, lot), kind, sig, strat) for q, lot, kind, sig, strat in positions.rows()]
    rows += [(_lots(q - f, lot), kind, sig, strat) for q, f, lot, kind, sig, strat in orders.rows()]
    for lots, kind, signal_key, strategy_key in rows:
        if kind == "FUT":
            if signal_key:
                hedges[signal_key] += lots
            continue
        if signal_key:
            by_signal[signal_key] += lots
        if strategy_key:
            by_strategy[strategy_key] += lots
    return dict(by_signal), dict(by_strategy), dict(hedges)


@dataclass(frozen=True)
class BasisReads:
    """What ``GateBasis.load`` reads from the database but the limits and today's P&L:
    the trading state, today's event days, the VIX breaker and the lots open and pending
    per signal and strategy. Each stays the same until one of ``writes.GATE_BASIS`` is
    written (the engine keeps them across snapshots while none is, ``Engine._basis_reads``)."""

    day: dt.date
    trading_state: str
    event_action: str | None
    vix_breaker: bool
    lots_by_signal: dict[str, int]
    lots_by_strategy: dict[str, int]
    hedge_lots_by_signal: dict[str, int]

    @classmethod
    def read(cls, account: str, day: dt.date) -> BasisReads:
        state = _prepared(
            ("state", account), lambda: TradingState.objects.filter(account=account).values_list("state")[:1]
        ).rows()
        actions = [
            a
            for (a,) in _prepared(
                ("events", day), lambda: EventDay.objects.filter(date=day).values_list("action")
            ).rows()
        ]
        vix = _prepared(
            ("vix", account),
            lambda: BreakerTrip.objects.filter(account=account, breaker="vix", cleared_at__isnull=True).values_list(
                "pk"
            )[:1],
        )
        by_signal, by_strategy, hedges = _lots_by_key(account)
        return cls(
            day=day,
            trading_state=state[0][0] if state else "ACTIVE",
            event_action=max(actions, key=lambda a: SEVERITY.get(a, 0), default=None),
            vix_breaker=vix.exists(),
            lots_by_signal=by_signal,
            lots_by_strategy=by_strategy,
            hedge_lots_by_signal=hedges,
        )


@dataclass
class GateBasis:
    """The database side of the gate's context, read once and kept current in memory.

    Valid for one snapshot: the engine makes a new one at the next snapshot
    (or second), from its held ``BasisReads`` and carried P&L while this
    process has written nothing they read, else read again: a change made in
    this process is seen at the next snapshot, one made in another (the admin
    of a separate web process) within ``trading.writes.RECHECK_S``. Within the snapshot,
    ``record`` counts every passed intent as if it were already open: its lots
    against its signal and strategy, its margin as utilised. That errs on the
    safe side (a probe that does not fill still counts until the next
    snapshot) and never lets two intents of one snapshot share the same room.
    """

    now: dt.datetime
    limits: Limits
    trading_state: str = "ACTIVE"
    event_action: str | None = None
    daily_net_pnl: Decimal = Decimal("0")
    vix_breaker: bool = False
    lots_by_signal: dict[str, int] = field(default_factory=dict)
    lots_by_strategy: dict[str, int] = field(default_factory=dict)
    hedge_lots_by_signal: dict[str, int] = field(default_factory=dict)
    funds: Funds | None = None

    @classmethod
    def load(
        cls,
        *,
        account: str,
        now: dt.datetime,
        funds: Funds | None = None,
        limits=None,
        reads: BasisReads | None = None,
        pnl: Decimal | None = None,
    ) -> GateBasis:
        """``limits``: a RiskLimits row the caller read in this same snapshot (else read here).
        ``reads`` and ``pnl``: what the caller holds that a read now would return (the
        engine's kept ``BasisReads`` and its carried P&L); what is not given is read."""
        if reads is None:
            reads = BasisReads.read(account, now.astimezone(IST).date())
        return cls(
            now=now,
            limits=Limits.from_model(limits if limits is not None else RiskLimits.active()),
            trading_state=reads.trading_state,
            event_action=reads.event_action,
            daily_net_pnl=daily_net_pnl(account, now) if pnl is None else pnl,
            vix_breaker=reads.vix_breaker,
            # Copies: ``record`` adds this snapshot's intents to them.
            lots_by_signal=dict(reads.lots_by_signal),
            lots_by_strategy=dict(reads.lots_by_strategy),
            hedge_lots_by_signal=dict(reads.hedge_lots_by_signal),
            funds=funds,
        )

    def context(
        self,
        intent,
        *,
        instrument,
        now: dt.datetime,
        quote: Quote | None = None,
        underlying_price: float | None = None,
        feed_stale: bool = False,
        orders_last_second: int = 0,
    ) -> GateContext:
        funds = self.funds
        return GateContext(
            now=now,
            trading_state=self.trading_state,
            limits=self.limits,
            event_action=self.event_action,
            feed_stale=feed_stale,
            lots_for_signal=self.lots_by_signal.get(intent.signal_key, 0) if intent.signal_key else 0,
            lots_for_strategy=self.lots_by_strategy.get(intent.strategy_key, 0) if intent.strategy_key else 0,
            hedge_lots_for_signal=self.hedge_lots_by_signal.get(intent.signal_key, 0) if intent.signal_key else 0,
            margin_available=funds.available if funds else Decimal("0"),
            margin_utilised=funds.utilised if funds else Decimal("0"),
            margin_per_lot=margin_per_lot(instrument, intent.side, quote, underlying_price) if funds else Decimal("0"),
            daily_net_pnl=self.daily_net_pnl,
            vix_breaker=self.vix_breaker,
            lot_size=instrument.lot_size,
            freeze_quantity=instrument.freeze_quantity,
            tick_size=instrument.tick_size,
            quote=quote,
            orders_last_second=orders_last_second,
        )

    def record(self, intent, lots: int, ctx: GateContext) -> None:
        """A passed intent is on its way: count its lots and margin for the rest of the snapshot.

        Exits are not subtracted (an exit that does not fill must not free
        room); everything that adds exposure is added: options to the option
        lots, hedges to the signal's hedge lots, both to the margin used.
        """
        if intent.reduces_exposure or lots <= 0:
            return
        if intent.purpose == "HEDGE":
            if intent.signal_key:
                self.hedge_lots_by_signal[intent.signal_key] = (
                    self.hedge_lots_by_signal.get(intent.signal_key, 0) + lots
                )
        else:
            if intent.signal_key:
                self.lots_by_signal[intent.signal_key] = self.lots_by_signal.get(intent.signal_key, 0) + lots
            if intent.strategy_key:
                self.lots_by_strategy[intent.strategy_key] = self.lots_by_strategy.get(intent.strategy_key, 0) + lots
        if self.funds is not None and ctx.margin_per_lot > 0:
            margin = ctx.margin_per_lot * lots
            self.funds = replace(
                self.funds, available=self.funds.available - margin, utilised=self.funds.utilised + margin
            )


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
    """One intent's context, read fresh (the active limits apply to the next intent)."""
    return GateBasis.load(account=account, now=now, funds=funds).context(
        intent,
        instrument=instrument,
        now=now,
        quote=quote,
        underlying_price=underlying_price,
        feed_stale=feed_stale,
        orders_last_second=orders_last_second,
    )


def daily_charges(account: str, now: dt.datetime) -> Decimal:
    """Today's charges in our books: closed trades' and open positions' (the part of
    ``daily_net_pnl`` that a broker's P&L report leaves out)."""
    from django.db.models import Sum

    start = dt.datetime.combine(now.astimezone(IST).date(), dt.time(0), tzinfo=IST)
    closed = Trade.objects.filter(account=account, closed_at__gte=start).aggregate(c=Sum("charges"))["c"]
    open_ = (
        Position.objects.filter(account=account, opened_at__gte=start)
        .exclude(net_quantity=0)
        .aggregate(c=Sum("charges"))["c"]
    )
    return _money(closed) + _money(open_)
