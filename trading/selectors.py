"""Reads for the dashboards and the API: one function per panel.

Each returns plain data (Decimals for money) built from committed rows, so the
same numbers reach an htmx request, a websocket push and the REST API.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db.models import Max, Q
from django.utils import timezone

from quanthub.clock import IST, SESSION_OPEN
from quanthub.sql import Statement
from risk.context import daily_net_pnl
from risk.models import BreakerTrip, EventDay, RiskLimits
from risk.services import get_trading_state
from trading.models import Alert, EngineHeartbeat, Order, Position, Signal, Strategy, Trade

ZERO = Decimal("0")


def _today_start(now: dt.datetime) -> dt.datetime:
    return dt.datetime.combine(now.astimezone(IST).date(), dt.time(0), tzinfo=IST)


_pass: contextvars.ContextVar[dict | None] = contextvars.ContextVar("qh_render_pass", default=None)


@contextlib.contextmanager
def one_read_of_the_heartbeat():
    """Within the block (the panels of one push), ``latest_heartbeat``, the trading
    state and the strategies are read once each: the panels then agree on the
    engine's clock and the state, at a fraction of the queries."""
    token = _pass.set({})
    try:
        yield
    finally:
        _pass.reset(token)


def _once(key: tuple, read):
    memo = _pass.get()
    if memo is None:
        return read()
    if key not in memo:
        memo[key] = read()
    return memo[key]


# The panels' small reads of every push, compiled once (``quanthub.sql.Statement``): at a
# push a second, compiling these queries cost more than running them.
_HEARTBEAT = Statement(lambda account: EngineHeartbeat.objects.filter(account=account).order_by("-beat_at")[:1], str)
_STRATEGIES = Statement(lambda: Strategy.objects.order_by("key"))
_OPEN_ALERTS = Statement(lambda account: Alert.objects.filter(account=account, acknowledged_at__isnull=True)[:8], str)
_EVENT_DAYS = Statement(lambda today, tomorrow: EventDay.objects.filter(date__in=[today, tomorrow]), dt.date, dt.date)
_BREAKERS = Statement(
    lambda account: BreakerTrip.objects.filter(account=account, cleared_at__isnull=True).order_by("-tripped_at")[:10],
    str,
)


def _one(rows: list):
    return rows[0] if rows else None


def latest_heartbeat(account: str) -> EngineHeartbeat | None:
    return _once(("heartbeat", account), lambda: _one(_HEARTBEAT.objects(account)))


def _trading_state(account: str):
    return _once(("trading_state", account), lambda: get_trading_state(account))


def _strategies() -> list[Strategy]:
    return _once(("strategies",), _STRATEGIES.objects)


def _open_book(account: str) -> list[Position]:
    """The account's open positions with their instrument, underlying, strategy and
    signal: one read shared by the panels of a push (overview, positions, risk,
    scorecards). Read only; a panel must not change them."""
    return _once(
        ("open_book", account),
        lambda: list(
            Position.objects.filter(account=account)
            .exclude(net_quantity=0)
            .select_related("instrument", "instrument__underlying", "strategy", "signal")
        ),
    )


def market_now(account: str) -> dt.datetime:
    """The engine's clock when it runs (simulated in the demo), else the wall clock."""
    beat = latest_heartbeat(account)
    if beat is not None and beat.role == EngineHeartbeat.Role.ACTIVE and beat.market_time:
        return beat.market_time
    return timezone.now()


def drawdown(curve: list[Decimal]) -> tuple[Decimal, list[Decimal]]:
    """Max drawdown (a positive amount) and the drawdown at each point."""
    peak, worst, series = ZERO, ZERO, []
    for value in curve:
        peak = max(peak, value)
        series.append(value - peak)
        worst = min(worst, value - peak)
    return -worst, series


@dataclass
class Overview:
    gross_pnl: Decimal
    charges: Decimal
    net_pnl: Decimal
    realised: Decimal
    unrealised: Decimal
    trades_today: int
    open_positions: int
    equity: list[tuple[dt.datetime, Decimal]]
    max_drawdown: Decimal
    trading_state: object
    heartbeat: EngineHeartbeat | None
    heartbeat_age_s: float | None
    engine_alive: bool
    feed_health: dict
    alerts: list[Alert]
    open_alerts: int
    now: dt.datetime = field(default_factory=timezone.now)

    def as_dict(self) -> dict:
        """JSON-safe: money as two-decimal strings, every time in IST with its offset."""

        def money(value: Decimal) -> str:
            return str(Decimal(value).quantize(Decimal("0.01")))

        def ist(value: dt.datetime | None) -> str | None:
            return None if value is None else value.astimezone(IST).isoformat()

        beat = self.heartbeat
        return {
            "gross_pnl": money(self.gross_pnl),
            "charges": money(self.charges),
            "net_pnl": money(self.net_pnl),
            "realised": money(self.realised),
            "unrealised": money(self.unrealised),
            "trades_today": self.trades_today,
            "open_positions": self.open_positions,
            "max_drawdown": money(self.max_drawdown),
            "equity": [[ist(t), money(v)] for t, v in self.equity],
            "trading_state": self.trading_state.state,
            "trading_state_reason": self.trading_state.reason,
            "as_of": ist(self.now),
            "engine": None
            if beat is None
            else {
                "engine_id": beat.engine_id,
                "role": beat.role,
                "broker": beat.broker,
                "feed": beat.feed,
                "beat_at": ist(beat.beat_at),
                "age_s": self.heartbeat_age_s,
                "alive": self.engine_alive,
                "market_time": ist(beat.market_time),
            },
            "feed_health": self.feed_health,
            "open_alerts": self.open_alerts,
        }


def overview(account: str = "default") -> Overview:
    now = market_now(account)
    start = _today_start(now)
    trades = list(
        Trade.objects.filter(account=account, closed_at__gte=start)
        .order_by("closed_at")
        .values_list("closed_at", "gross_pnl", "charges", "net_pnl")
    )
    open_rows = _open_book(account)
    open_realised = sum((p.realised_pnl for p in open_rows), ZERO)
    open_unrealised = sum((p.unrealised_pnl for p in open_rows), ZERO)
    open_charges = sum((p.charges for p in open_rows), ZERO)
    closed_gross = sum((t[1] for t in trades), ZERO)
    closed_charges = sum((t[2] for t in trades), ZERO)
    gross = closed_gross + open_realised + open_unrealised
    charges = closed_charges + open_charges
    net_now = gross - charges
    equity = equity_curve(account, now, net_now) if trades or open_rows else []
    max_dd, _ = drawdown([v for _, v in equity])
    beat = latest_heartbeat(account)
    age = (timezone.now() - beat.beat_at).total_seconds() if beat else None
    alive = bool(
        beat and beat.role == EngineHeartbeat.Role.ACTIVE and age is not None and age <= settings.HEALTH_ENGINE_STALE_S
    )
    alerts = _OPEN_ALERTS.objects(account)
    return Overview(
        gross_pnl=gross,
        charges=charges,
        net_pnl=gross - charges,
        realised=closed_gross + open_realised,
        unrealised=open_unrealised,
        trades_today=len(trades),
        open_positions=len(open_rows),
        equity=equity,
        max_drawdown=max_dd,
        trading_state=_trading_state(account),
        heartbeat=beat,
        heartbeat_age_s=round(age, 1) if age is not None else None,
        engine_alive=alive,
        feed_health=(beat.feed_health if beat else {}) or {},
        alerts=alerts,
        # Fewer than the first eight: they are all of them, and need no count.
        open_alerts=len(alerts)
        if len(alerts) < 8
        else Alert.objects.filter(account=account, acknowledged_at__isnull=True).count(),
        now=now,
    )


_equity_memo: dict[str, tuple[tuple, list]] = {}


def equity_curve(account: str, now: dt.datetime, net_now: Decimal) -> list[tuple[dt.datetime, Decimal]]:
    """Today's net equity marked every minute: the day's fills replayed minute by
    minute (cash out and in, charges, inventory), each open unit marked at its
    instrument's minute-bar close (the last fill price until a bar exists), ending
    at ``net_now``, the book's own figure for now. Between trades the curve moves
    with the marks, as the book did."""
    from marketdata.models import MinuteBar
    from trading.models import Fill

    start = dt.datetime.combine(now.astimezone(IST).date(), SESSION_OPEN, tzinfo=IST)
    fills = list(
        Fill.objects.filter(order__account=account, filled_at__gte=_today_start(now), filled_at__lte=now)
        .order_by("filled_at", "id")
        .values_list("filled_at", "order__instrument__security_id", "order__side", "quantity", "price", "charges")
    )
    current = now.replace(second=0, microsecond=0)
    memo_key = (start, current, len(fills), fills[-1][0] if fills else None)
    cached = _equity_memo.get(account)
    if cached is not None and cached[0] == memo_key:
        return [*cached[1], (now, net_now)]
    sids = {f[1] for f in fills}
    closes: dict[dt.datetime, dict[str, Decimal]] = {}
    for minute, sid, close in (
        MinuteBar.objects.filter(security_id__in=sids, minute__gte=start, minute__lte=now)
        .order_by("minute")
        .values_list("minute", "security_id", "close_paise")
    ):
        closes.setdefault(minute, {})[sid] = Decimal(close) / 100
    cash, held, marks = ZERO, {}, {}
    curve: list[tuple[dt.datetime, Decimal]] = [(start, ZERO)]
    minute, k = start + dt.timedelta(minutes=1), 0
    while minute < now:
        while k < len(fills) and fills[k][0] < minute:
            _, sid, side, qty, price, fee = fills[k]
            signed = qty if side == Order.Side.BUY else -qty
            cash += -signed * price - fee
            held[sid] = held.get(sid, 0) + signed
            marks[sid] = price
            k += 1
        # A bar is stamped with its minute's start: its close is the mark at the minute's end.
        marks.update(closes.get(minute - dt.timedelta(minutes=1), {}))
        value = cash + sum((q * marks[sid] for sid, q in held.items() if q), ZERO)
        curve.append((minute, value.quantize(Decimal("0.01"))))
        minute += dt.timedelta(minutes=1)
    # The whole minutes do not change until the next minute or fill: pushed every
    # second, the curve is recomputed about once a minute.
    _equity_memo[account] = (memo_key, curve)
    return [*curve, (now, net_now)]


@dataclass
class PositionRow:
    position: Position
    lots: int
    net_pnl: Decimal
    ttl_left_s: int | None
    exit_state: dict | None = None  # the latest exit or Kill All order on the row, as its order row says
    hedge: bool = False  # a futures hedge, shown under its option leg

    @property
    def is_future(self) -> bool:
        return self.position.instrument.kind == "FUT"

    def _total(self, greek: str) -> float | None:
        # A future has Δ = 1 per unit and no Γ, Θ or vega: shown as Δ only.
        if self.is_future and greek != "delta":
            return None
        value = getattr(self.position, greek)
        return None if value is None else value * self.position.net_quantity

    # Position Greeks: per-unit Greeks times the signed quantity (Δ in units of the underlying).
    @property
    def delta(self) -> float | None:
        return self._total("delta")

    @property
    def gamma(self) -> float | None:
        return self._total("gamma")

    @property
    def theta(self) -> float | None:
        return self._total("theta")

    @property
    def vega(self) -> float | None:
        return self._total("vega")


@dataclass
class NetGreeks:
    """One underlying's open book: Δ in units, lots and ₹ (Δ × spot), Γ per point in
    units and lots, Θ in ₹ a day, vega in ₹ a vol point, P&L."""

    underlying: str
    lot_size: int
    spot: Decimal | None
    delta: float = 0.0
    gamma: float = 0.0
    theta: float = 0.0
    vega: float = 0.0
    net_pnl: Decimal = ZERO
    positions: int = 0

    @property
    def delta_lots(self) -> float:
        return self.delta / self.lot_size if self.lot_size else 0.0

    @property
    def gamma_lots(self) -> float:
        return self.gamma / self.lot_size if self.lot_size else 0.0

    @property
    def delta_rupees(self) -> Decimal | None:
        return None if self.spot is None else (Decimal(str(self.delta)) * self.spot).quantize(Decimal("0.01"))


EXIT_PURPOSES = (Order.Purpose.EXIT, Order.Purpose.KILL)
WORKING = (Order.State.NEW, Order.State.SUBMITTING, Order.State.OPEN, Order.State.PARTIAL)


def exit_state(order: Order | None) -> dict | None:
    """What a position's latest exit order is doing, read from its row: working,
    re-priced (working after a modification or re-quote), rejected with its reason,
    done, or cancelled/unknown with the reason."""
    if order is None:
        return None
    if order.state in WORKING:
        moved = order.modification_count or order.requote_count
        label = "re-priced" if moved else "working"
        detail = f"{order.filled_quantity}/{order.quantity} filled"
        if moved:
            detail += f", re-priced {moved}×"
        return {"state": label, "detail": detail, "css": "warn", "order": order.client_order_id}
    if order.state == Order.State.FILLED:
        return {
            "state": "done",
            "detail": f"filled at {order.average_price}",
            "css": "up",
            "order": order.client_order_id,
        }
    if order.state == Order.State.REJECTED:
        return {
            "state": "rejected:",
            "detail": f"{order.reject_code} {order.reason}".strip(),
            "css": "down",
            "order": order.client_order_id,
        }
    return {
        "state": order.get_state_display().lower(),
        "detail": order.reason,
        "css": "muted",
        "order": order.client_order_id,
    }


def _latest_exits(account: str, positions: list[Position]) -> dict[int, Order]:
    """The latest exit or Kill All order of each position since it opened."""
    if not positions:
        return {}
    earliest = min((p.opened_at for p in positions if p.opened_at), default=None)
    orders = Order.objects.filter(
        account=account, purpose__in=EXIT_PURPOSES, instrument_id__in={p.instrument_id for p in positions}
    )
    if earliest is not None:
        orders = orders.filter(created_at__gte=earliest)
    latest: dict[tuple, Order] = {}
    for o in orders.order_by("id"):
        latest[(o.instrument_id, o.strategy_id)] = o
    out = {}
    for p in positions:
        o = latest.get((p.instrument_id, p.strategy_id))
        if o is not None and (p.opened_at is None or o.created_at >= p.opened_at):
            out[p.pk] = o
    return out


def _ordered(rows: list[PositionRow]) -> list[PositionRow]:
    """Options first by underlying and signal; each futures hedge right under the
    option leg of its signal (or at the end of its underlying when it has none)."""
    options = [r for r in rows if not r.is_future]
    futures = [r for r in rows if r.is_future]
    out: list[PositionRow] = []
    placed: set[int] = set()
    key = lambda r: (r.position.instrument.underlying.symbol, r.position.signal_id or 0, r.position.pk)  # noqa: E731
    for row in sorted(options, key=key):
        out.append(row)
        for hedge in futures:
            if hedge.position.pk in placed or not row.position.signal_id:
                continue
            if hedge.position.signal_id == row.position.signal_id:
                hedge.hedge = True
                placed.add(hedge.position.pk)
                out.append(hedge)
    for hedge in sorted(futures, key=key):
        if hedge.position.pk not in placed:
            hedge.hedge = any(
                o.position.instrument.underlying_id == hedge.position.instrument.underlying_id for o in options
            )
            out.append(hedge)
    return out


def open_positions(account: str = "default") -> list[PositionRow]:
    now = market_now(account)
    positions = _open_book(account)
    exits = _latest_exits(account, positions)
    rows = []
    for p in positions:
        ttl = None
        if p.ttl_seconds and p.opened_at:
            ttl = max(int(p.ttl_seconds - (now - p.opened_at).total_seconds()), 0)
        lots = abs(p.net_quantity) // max(p.instrument.lot_size, 1)
        rows.append(PositionRow(p, lots, p.net_pnl, ttl, exit_state(exits.get(p.pk))))
    return _ordered(rows)


def _spot(symbol: str):
    from marketdata.models import ChainQuote

    return ChainQuote.objects.filter(underlying=symbol).order_by("-received_at").values_list("underlying_paise")[:1]


_SPOT = Statement(_spot, str)  # the underlying's latest stored chain's spot


def net_greeks(rows: list[PositionRow]) -> list[NetGreeks]:
    """The book's net Greeks per underlying (spot from its latest stored chain)."""
    nets: dict[str, NetGreeks] = {}
    for row in rows:
        inst = row.position.instrument
        symbol = inst.underlying.symbol
        net = nets.get(symbol)
        if net is None:
            spot = _one([paise for (paise,) in _SPOT.rows(symbol)])
            net = nets[symbol] = NetGreeks(symbol, inst.lot_size, Decimal(spot) / 100 if spot else None)
        for greek in ("delta", "gamma", "theta", "vega"):
            value = getattr(row, greek)
            if value is not None:
                setattr(net, greek, getattr(net, greek) + value)
        net.net_pnl += row.net_pnl
        net.positions += 1
    return list(nets.values())


@dataclass
class Scorecard:
    strategy: Strategy
    trades: int
    trades_today: int
    wins: int
    win_rate: float | None
    avg_rr: float | None
    net_pnl: Decimal
    max_drawdown: Decimal
    open_lots: int
    open_pnl: Decimal = ZERO


def scorecards(account: str = "default") -> list[Scorecard]:
    start = _today_start(market_now(account))
    strategies = _strategies()
    # Every strategy's trades in one read, and its open positions from the push's book.
    trades: dict[int, list[tuple]] = {s.pk: [] for s in strategies}
    for strategy_id, *row in (
        Trade.objects.filter(account=account, strategy_id__in=list(trades))
        .order_by("closed_at")
        .values_list("strategy_id", "net_pnl", "risk_amount", "closed_at")
    ):
        trades[strategy_id].append(tuple(row))
    book: dict[int, list[Position]] = {}
    for p in _open_book(account):
        book.setdefault(p.strategy_id, []).append(p)
    cards = []
    for strategy in strategies:
        rows = trades[strategy.pk]
        wins = [r for r in rows if r[0] > 0]
        losses = [r for r in rows if r[0] <= 0]
        rr = None
        if wins and losses:
            avg_win = sum((r[0] for r in wins), ZERO) / len(wins)
            avg_loss = -sum((r[0] for r in losses), ZERO) / len(losses)
            rr = float(avg_win / avg_loss) if avg_loss else None
        elif rows and any(r[1] for r in rows):
            multiples = [float(r[0] / r[1]) for r in rows if r[1]]
            rr = sum(multiples) / len(multiples) if multiples else None
        running, curve = ZERO, []
        for r in rows:
            running += r[0]
            curve.append(running)
        max_dd, _ = drawdown(curve)
        held = book.get(strategy.pk, [])
        lots = sum(abs(p.net_quantity) // max(p.instrument.lot_size, 1) for p in held if p.instrument.kind != "FUT")
        cards.append(
            Scorecard(
                strategy=strategy,
                trades=len(rows),
                trades_today=sum(1 for r in rows if r[2] >= start),
                wins=len(wins),
                win_rate=len(wins) / len(rows) if rows else None,
                avg_rr=rr,
                net_pnl=running,
                max_drawdown=max_dd,
                open_lots=lots,
                open_pnl=sum((p.net_pnl for p in held), ZERO),
            )
        )
    return cards


@dataclass
class RiskPanel:
    limits: RiskLimits
    capital: Decimal | None  # None: no engine has reported the broker's funds
    margin_used: Decimal | None
    margin_cap: Decimal | None
    margin_pct: float | None
    daily_net_pnl: Decimal
    loss_used_pct: float
    lots: list[tuple[str, int, int]]  # per strategy: option lots held, the per-strategy cap
    hedge_lots: list[tuple[str, int]]  # per strategy: futures lots held as hedges
    breakers: list[BreakerTrip]
    event_day: EventDay | None
    trading_state: object
    event_days: list[EventDay] = field(default_factory=list)  # today's and tomorrow's, most severe first
    pnl_exit: dict | None = None  # the broker-side P&L exit as the engine last read it back
    funds_as_of: dt.datetime | None = None  # the engine's clock when it read the broker's funds
    funds_age_s: float | None = None
    as_of: dt.datetime | None = None  # the engine's clock at its latest heartbeat


def risk_panel(account: str = "default") -> RiskPanel:

    now = market_now(account)
    limits = RiskLimits.active()
    # The broker's own figures, as the engine last read them (every 5 s); none without an engine.
    beat = latest_heartbeat(account)
    funds = (beat.stats or {}).get("funds") if beat else None
    pnl_exit = (beat.stats or {}).get("pnl_exit") if beat else None
    capital = Decimal(funds["total"]) if funds else None
    funds_as_of = dt.datetime.fromisoformat(funds["as_of"]) if funds and funds.get("as_of") else None
    margin = Decimal(funds["utilised"]) if funds else None
    cap_pct = Decimal(limits.margin_utilisation_cap_pct)
    daily = daily_net_pnl(account, now)
    loss_pct = float(max(-daily, ZERO) / limits.daily_loss_cap * 100) if limits.daily_loss_cap else 0.0
    # Option lots count against the per-strategy cap; hedges (futures) are shown apart.
    held: dict[int, int] = {}
    hedged: dict[int, int] = {}
    for p in _open_book(account):
        if p.strategy_id is None:
            continue
        into = hedged if p.instrument.kind == "FUT" else held
        into[p.strategy_id] = into.get(p.strategy_id, 0) + abs(p.net_quantity) // max(p.instrument.lot_size, 1)
    strategies = _strategies()
    lots = [(s.name or s.key, held.get(s.pk, 0), limits.max_lots_per_strategy) for s in strategies]
    hedge_lots = [(s.name or s.key, hedged.get(s.pk, 0)) for s in strategies]
    today = now.astimezone(IST).date()
    severity = {"HALT": 0, "REDUCE_ONLY": 1, "NO_NEW_ENTRIES": 2}
    event_days = sorted(
        _EVENT_DAYS.objects(today, today + dt.timedelta(days=1)),
        key=lambda e: (e.date, severity.get(e.action, 3)),
    )
    return RiskPanel(
        limits=limits,
        capital=capital,
        margin_used=margin,
        margin_cap=capital * cap_pct / 100 if capital is not None else None,
        margin_pct=float(margin / capital * 100) if capital else None,
        daily_net_pnl=daily,
        loss_used_pct=loss_pct,
        lots=lots,
        hedge_lots=hedge_lots,
        breakers=_BREAKERS.objects(account),
        event_day=next((e for e in event_days if e.date == today), None),
        trading_state=_trading_state(account),
        event_days=event_days,
        pnl_exit=pnl_exit,
        funds_as_of=funds_as_of,
        funds_age_s=(now - funds_as_of).total_seconds() if funds_as_of else None,
        as_of=beat.market_time if beat is not None else None,
    )


def latency_ms(account: str = "default", limit: int = 500) -> list[float]:
    """Snapshot → broker acknowledgement of the latest orders, in milliseconds."""
    rows = (
        Order.objects.filter(account=account)
        .exclude(snapshot_at=None)
        .exclude(acked_at=None)
        .order_by("-id")
        .values_list("snapshot_at", "acked_at")[:limit]
    )
    return [max((acked - snap).total_seconds() * 1000, 0.0) for snap, acked in rows]


def _reference_before(order: Order) -> Decimal | None:
    """The price a market order was measured against: the touch it would take (ask
    for a buy, bid for a sell) in the latest stored chain row at or before it was
    sent, or the instrument's last traded price for a future or index."""
    from marketdata.models import ChainQuote, LtpQuote

    at = order.submitting_at or order.created_at
    sid = order.instrument.security_id
    row = (
        ChainQuote.objects.filter(security_id=sid, received_at__lte=at)
        .order_by("-received_at")
        .values_list("bid_paise", "ask_paise")
        .first()
    )
    if row is not None:
        touch = row[1] if order.side == Order.Side.BUY else row[0]
        if touch > 0:
            return Decimal(touch) / 100
    ltp = (
        LtpQuote.objects.filter(security_id=sid, received_at__lte=at)
        .order_by("-received_at")
        .values_list("ltp_paise", flat=True)
        .first()
    )
    return Decimal(ltp) / 100 if ltp else None


def slippage(account: str = "default", limit: int = 50) -> list[dict]:
    """Per filled leg, every order type: the price we first quoted (a limit order's
    first limit; a market order's touch, or last price, when it was sent) against the
    average fill, in ₹ and ticks (positive = worse for us)."""
    legs = []
    for o in (
        Order.objects.filter(account=account, filled_quantity__gt=0)
        .exclude(average_price=None)
        .select_related("instrument")
        .order_by("-id")[:limit]
    ):
        reference = o.first_price if o.first_price is not None else _reference_before(o)
        if reference is None:
            legs.append({"order": o, "reference": None, "slippage": None, "ticks": None})
            continue
        diff = (o.average_price - reference) if o.side == Order.Side.BUY else (reference - o.average_price)
        tick = getattr(o.instrument, "tick_size", None)
        legs.append(
            {"order": o, "reference": reference, "slippage": diff, "ticks": float(diff / tick) if tick else None}
        )
    return legs


def alpha_decay(account: str = "default", limit: int = 500) -> list[tuple[float, float]]:
    """(minutes held, net P&L) of closed trades: how fast the edge fades."""
    rows = (
        Trade.objects.filter(account=account)
        .order_by("-closed_at")
        .values_list("opened_at", "closed_at", "net_pnl")[:limit]
    )
    return [((closed - opened).total_seconds() / 60, float(net)) for opened, closed, net in rows]


@dataclass
class ChainRow:
    strike: Decimal
    ce: dict | None = None
    pe: dict | None = None
    atm: bool = False

    @property
    def straddle(self) -> Decimal | None:
        if self.ce is None or self.pe is None:
            return None
        return _mid(self.ce) + _mid(self.pe)


def _mid(q: dict) -> Decimal:
    bid, ask = q.get("bid") or ZERO, q.get("ask") or ZERO
    return (bid + ask) / 2 if bid > 0 and ask > 0 else q["last"]


def chain_expiries(underlying: str, today: dt.date) -> list[dt.date]:
    """The option expiries of the instrument master from today on, nearest first."""
    from marketdata.models import Instrument

    return list(
        Instrument.objects.filter(
            underlying__symbol=underlying, kind__in=["CE", "PE"], expiry__gte=today, is_active=True
        )
        .values_list("expiry", flat=True)
        .distinct()
        .order_by("expiry")
    )


def _stored_chain(underlying: str, expiry: dt.date | None) -> list[dict]:
    from marketdata.models import ChainQuote

    quotes = ChainQuote.objects.filter(underlying=underlying)
    if expiry is not None:
        quotes = quotes.filter(expiry=expiry)
    latest = quotes.aggregate(t=Max("received_at"))["t"]
    if latest is None:
        return []
    return [
        {
            "security_id": q["security_id"],
            "strike": Decimal(q["strike_paise"]) / 100,
            "option_type": q["option_type"],
            "oi": q["oi"],
            "oi_change": q["oi"] - q["prev_oi"],
            "volume": q["volume"],
            "bid": Decimal(q["bid_paise"]) / 100,
            "ask": Decimal(q["ask_paise"]) / 100,
            "iv": q["iv"],
            "delta": q["delta"],
            "gamma": q["gamma"],
            "theta": q["theta"],
            "vega": q["vega"],
            "last": Decimal(q["last_paise"]) / 100,
            "underlying": Decimal(q["underlying_paise"]) / 100,
            "at": q["received_at"],
            "expiry": q["expiry"],
        }
        for q in quotes.filter(received_at=latest).values()
    ]


def option_chain(
    underlying: str,
    account: str = "default",
    rows: list[dict] | None = None,
    expiry: str | dt.date | None = None,
    *,
    with_expiries: bool = True,
) -> dict:
    """The latest chain of one underlying (stored, or the rows the engine pushes), CE
    and PE side by side around the money: the at-the-money strike marked, in-the-money
    sides flagged, the put-call ratio of open interest and the ATM straddle (CE + PE
    mid) in the header, the instruments of live signals marked. ``expiry``: the one
    the page asked for (a pushed chain of another expiry is not shown).
    ``with_expiries``: also list the instrument master's expiries (the page's picker)."""
    wanted = dt.date.fromisoformat(expiry) if isinstance(expiry, str) and expiry else expiry or None
    if rows is not None and wanted is not None and rows and rows[0].get("expiry") != wanted:
        rows = None
    if rows is None:
        rows = _stored_chain(underlying, wanted)
    live = set(
        Signal.objects.filter(strategy__positions__account=account)
        .filter(~Q(phase__in=["CLOSED", "REFUSED"]))
        .values_list("instrument__security_id", flat=True)
    ) | set(
        Signal.objects.filter(~Q(phase__in=["CLOSED", "REFUSED"]), instrument__underlying__symbol=underlying)
        .order_by("-detected_at")
        .values_list("instrument__security_id", flat=True)[:20]
    )
    spot = rows[0]["underlying"] if rows else None
    by_strike: dict[Decimal, ChainRow] = {}
    ce_oi = pe_oi = 0
    for r in rows:
        row = by_strike.setdefault(r["strike"], ChainRow(r["strike"]))
        call = r["option_type"] == 0
        itm = spot is not None and (r["strike"] < spot if call else r["strike"] > spot)
        r = {**r, "signal": r["security_id"] in live, "itm": itm}
        if call:
            row.ce = r
            ce_oi += r["oi"]
        else:
            row.pe = r
            pe_oi += r["oi"]
    strikes = sorted(by_strike)
    atm_row = None
    if spot is not None and strikes:
        atm = min(range(len(strikes)), key=lambda i: abs(strikes[i] - spot))
        atm_row = by_strike[strikes[atm]]
        atm_row.atm = True
        if len(strikes) > 21:
            strikes = strikes[max(atm - 10, 0) : atm + 11]
    at = rows[0]["at"] if rows else None
    if isinstance(at, str):
        at = dt.datetime.fromisoformat(at)
    shown_expiry = rows[0].get("expiry") if rows else wanted
    today = (at or market_now(account)).astimezone(IST).date()
    return {
        "underlying": underlying,
        "spot": spot,
        "at": at,
        "expiry": shown_expiry,
        "wanted_expiry": wanted,
        "days_to_expiry": (shown_expiry - today).days if shown_expiry else None,
        "expiries": chain_expiries(underlying, today) if with_expiries else [],
        "pcr": round(pe_oi / ce_oi, 2) if ce_oi else None,
        "atm_strike": atm_row.strike if atm_row else None,
        "straddle": atm_row.straddle if atm_row else None,
        "rows": [by_strike[s] for s in strikes],
    }
