"""A backtest's report and its decision hash, read back from the database.

Everything here reads rows of one backtest account (and the audit records of
its orders and signals); nothing is taken from the engine's memory except the
wall-clock tick-to-intent timings, which never reach the database.

The decision hash is SHA-256 over the canonical JSON (``audit.chain``) of the
decision log: signals, signal transitions, gate refusals, orders, fills,
trades and the audit records of this run's orders and signals. It leaves out
what differs between two runs of the same data and seed: wall-clock times
(``created_at``, audit record times), database keys, the run id inside
account names, signal keys and client order ids (replaced by the key without
its run prefix and the order's ordinal), and the paper broker's random order
and trade ids. Every time that remains is simulated market time.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from collections import defaultdict
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Q

from audit.chain import canonical_json
from audit.models import AuditRecord
from quanthub.clock import IST
from risk.models import BreakerTrip, GateRefusal
from trading.backtest.runner import RunResult, order_id_prefix, signal_prefix
from trading.models import Fill, Order, Position, Signal, Trade

ZERO = Decimal("0")
RANDOM_IDS = ("broker_order_id", "trade_id", "correlation_id", "client_order_id")
MAX_SERIES = 5000  # points kept per distribution in the stored report


def _iso(value) -> str | None:
    """Market time in IST, as the rest of the market logic speaks it."""
    return value.astimezone(IST).isoformat() if value is not None else None


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value.quantize(Decimal("0.01")))


# --- the decision log ----------------------------------------------------------------


class _Ids:
    """Maps this run's keys and ids to their run-independent form."""

    def __init__(self, run_id: int, account: str, orders: list[Order]):
        self.signal_prefix = signal_prefix(run_id)
        self.account = account
        self.ordinal = {o.client_order_id: n for n, o in enumerate(orders, start=1)}

    def signal(self, key: str | None) -> str | None:
        return key[len(self.signal_prefix) :] if key and key.startswith(self.signal_prefix) else key

    def subject(self, subject: str) -> str:
        kind, _, rest = subject.partition(":")
        if kind == "order":
            return f"order:#{self.ordinal.get(rest, '?')}"
        if kind == "signal":
            return f"signal:{self.signal(rest)}"
        if kind == "account" and rest == self.account:
            return "account:backtest"
        return subject

    def clean(self, value: Any) -> Any:
        """Drop random ids and map run-specific strings anywhere in a payload."""
        if isinstance(value, dict):
            return {k: self.clean(v) for k, v in value.items() if k not in RANDOM_IDS}
        if isinstance(value, list):
            return [self.clean(v) for v in value]
        if isinstance(value, str):
            if value in self.ordinal:
                return f"#{self.ordinal[value]}"
            if value == self.account:
                return "backtest"
            return self.signal(value)
        return value


def decision_log(run_id: int, account: str) -> dict[str, list]:
    orders = list(Order.objects.filter(account=account).select_related("instrument", "signal").order_by("pk"))
    ids = _Ids(run_id, account, orders)
    prefix = signal_prefix(run_id)
    signals = [
        {
            "key": ids.signal(s.key),
            "strategy": s.strategy.key,
            "instrument": s.instrument.security_id,
            "features": s.features,
            "phase": s.phase,
            "detected_at": _iso(s.detected_at),
            "confirmed_at": _iso(s.confirmed_at),
            "closed_at": _iso(s.closed_at),
        }
        for s in Signal.objects.filter(key__startswith=prefix)
        .select_related("strategy", "instrument")
        .order_by("detected_at", "key")
    ]
    refusals = [
        {
            "at": _iso(r.refused_at),
            "rule": r.rule,
            "reason": r.reason,
            "strategy": r.strategy_key,
            "signal": ids.signal(r.signal_key),
            "instrument": r.security_id,
            "side": r.side,
            "purpose": r.purpose,
            "lots": r.requested_lots,
            "trading_state": r.trading_state,
            "details": r.details,
        }
        for r in GateRefusal.objects.filter(account=account).order_by("refused_at", "pk")
    ]
    order_rows = [
        {
            "n": ids.ordinal[o.client_order_id],
            "signal": ids.signal(o.signal.key) if o.signal_id else None,
            "instrument": o.instrument.security_id,
            "side": o.side,
            "purpose": o.purpose,
            "type": o.order_type,
            "quantity": o.quantity,
            "limit_price": _money(o.limit_price),
            "first_price": _money(o.first_price),
            "state": o.state,
            "filled": o.filled_quantity,
            "average_price": _money(o.average_price),
            "reject_code": o.reject_code,
            "reason": ids.clean(o.reason),
            "requotes": o.requote_count,
            "modifications": o.modification_count,
            "snapshot_at": _iso(o.snapshot_at),
            "intent_at": _iso(o.intent_at),
            "gate_passed_at": _iso(o.gate_passed_at),
            "first_fill_at": _iso(o.first_fill_at),
        }
        for o in orders
    ]
    fills = [
        {
            "order": ids.ordinal[f.order.client_order_id],
            "quantity": f.quantity,
            "price": _money(f.price),
            "charges": _money(f.charges),
            "at": _iso(f.filled_at),
        }
        for f in Fill.objects.filter(order__account=account).select_related("order").order_by("filled_at", "order_id")
    ]
    trades = [
        {
            "signal": ids.signal(t.signal.key) if t.signal_id else None,
            "instrument": t.instrument.security_id,
            "direction": t.direction,
            "quantity": t.quantity,
            "entry_price": _money(t.entry_price),
            "exit_price": _money(t.exit_price),
            "opened_at": _iso(t.opened_at),
            "closed_at": _iso(t.closed_at),
            "gross_pnl": _money(t.gross_pnl),
            "charges": _money(t.charges),
            "net_pnl": _money(t.net_pnl),
            "exit_reason": t.exit_reason,
            "risk_amount": _money(t.risk_amount),
        }
        for t in _trades(account)
    ]
    breakers = [
        {"breaker": b.breaker, "reason": b.reason, "at": _iso(b.tripped_at), "cleared": b.cleared_at is not None}
        for b in BreakerTrip.objects.filter(account=account).order_by("tripped_at", "pk")
    ]
    # The audit trail of this run's orders and signals, in chain order, without
    # the record times (some are wall clock) and with ids mapped: the engine's id
    # (its run and day) is left out of its actor.
    audit = audit_rows(
        AuditRecord.objects.filter(
            Q(subject__startswith=f"order:{order_id_prefix(run_id)}") | Q(subject__startswith=f"signal:{prefix}")
        ),
        ids,
    )
    return {
        "signals": signals,
        "gate_refusals": refusals,
        "orders": order_rows,
        "fills": fills,
        "trades": trades,
        "breakers": breakers,
        "audit": audit,
    }


def audit_rows(records, ids: _Ids) -> list[dict]:
    """Audit records in chain order as the decision log holds them: without their
    times (some are wall clock), with ids mapped, and with the engine's instance id
    (its host, process and run) left out of its actor."""
    return [
        {
            "action": a.action,
            "actor": "engine" if a.actor.startswith("engine:") else a.actor,
            "subject": ids.subject(a.subject),
            "payload": ids.clean(a.payload),
        }
        for a in records.order_by("seq")
    ]


def decision_hash(log: dict[str, list]) -> str:
    return hashlib.sha256(canonical_json(log).encode("utf-8")).hexdigest()


# --- figures ---------------------------------------------------------------------------


def _trades(account: str):
    return (
        Trade.objects.filter(account=account)
        .select_related("instrument", "signal")
        .order_by("closed_at", "opened_at", "instrument__security_id")
    )


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def distribution(values: list[float], *, digits: int = 3) -> dict[str, Any]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return {
        "count": len(values),
        "min": r(min(values)) if values else None,
        "mean": r(statistics.fmean(values)) if values else None,
        "p50": r(percentile(values, 50)),
        "p90": r(percentile(values, 90)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)) if values else None,
        "values": [r(v) for v in values[:MAX_SERIES]],
    }


def equity_and_drawdown(trades: list[Trade], start, capital: Decimal) -> dict[str, Any]:
    """Cumulative net P&L after each closed trade, and the deepest fall from a peak.

    Drawdown % is of the equity at the peak (capital + cumulative net then).
    """
    points = [{"time": _iso(start), "cumulative_net": "0.00"}]
    equity = peak = ZERO
    max_dd = ZERO
    max_dd_pct = ZERO
    for t in trades:
        equity += t.net_pnl
        points.append({"time": _iso(t.closed_at), "cumulative_net": _money(equity)})
        peak = max(peak, equity)
        dd = peak - equity
        if dd > max_dd:
            max_dd = dd
            base = capital + peak
            max_dd_pct = (dd / base * 100) if base > 0 else ZERO
    return {
        "equity_curve": points,
        "max_drawdown": _money(max_dd),
        "max_drawdown_pct": str(max_dd_pct.quantize(Decimal("0.0001"))),
    }


def slippage(account: str) -> dict[str, Any]:
    """Per filled leg: average fill price against the order's first limit price.

    Positive is worse for us (paid more on a buy, got less on a sell). Market
    orders without a limit have no reference and are counted apart.
    """
    legs: dict[str, list[float]] = defaultdict(list)
    rupees: dict[str, list[float]] = defaultdict(list)
    unreferenced = 0
    ticks: set[str] = set()
    for o in Order.objects.filter(account=account, filled_quantity__gt=0).select_related("instrument").order_by("pk"):
        reference = o.first_price or o.limit_price
        if reference is None or o.average_price is None:
            unreferenced += 1
            continue
        diff = o.average_price - reference if o.side == Order.Side.BUY else reference - o.average_price
        tick = o.instrument.tick_size  # each leg in its own instrument's ticks (options ₹0.05, futures more)
        ticks.add(str(tick))
        legs[o.purpose].append(float(diff / tick))
        rupees[o.purpose].append(float(diff))
    per_leg = {
        purpose: {"ticks": distribution(legs[purpose]), "rupees": distribution(rupees[purpose], digits=2)}
        for purpose in sorted(legs)
    }
    return {"per_leg": per_leg, "without_reference": unreferenced, "tick_size": ", ".join(sorted(ticks))}


def latency(account: str, result: RunResult) -> dict[str, Any]:
    snapshot_to_ack = [
        (o.acked_at - o.snapshot_at).total_seconds() * 1000
        for o in Order.objects.filter(account=account, snapshot_at__isnull=False, acked_at__isnull=False).only(
            "snapshot_at", "acked_at"
        )
    ]
    return {
        "snapshot_to_ack_ms": {
            **distribution(snapshot_to_ack),
            "clock": "simulated: the simulated clock stands still within a tick, so these are mostly 0",
        },
        "tick_to_intent_ms": {
            **distribution(result.tick_to_intent_ms),
            "clock": "wall: from a snapshot entering the strategies to a passed risk gate, measured by the engine",
        },
    }


def build_report(run, result: RunResult, *, scenario_name: str | None, strategies: list[str]) -> dict[str, Any]:
    account = result.account
    trades = list(_trades(account))
    gross = sum((t.gross_pnl for t in trades), ZERO)
    charges = sum((t.charges for t in trades), ZERO)
    net = sum((t.net_pnl for t in trades), ZERO)
    wins = [t for t in trades if t.net_pnl > 0]
    losses = [t for t in trades if t.net_pnl < 0]
    with_risk = [t for t in trades if t.risk_amount and t.risk_amount > 0]
    avg_win = sum((t.net_pnl for t in wins), ZERO) / len(wins) if wins else None
    avg_loss = sum((t.net_pnl for t in losses), ZERO) / len(losses) if losses else None
    capital = Decimal(settings.QUANTHUB_PAPER_CAPITAL)
    start = result.days[0].session_start if result.days else None
    log = decision_log(run.pk, account)
    open_positions = Position.objects.filter(account=account).exclude(net_quantity=0).count()
    report = {
        "id": run.pk,
        "account": account,
        "date_from": run.date_from.isoformat(),
        "date_to": run.date_to.isoformat(),
        "seed": run.seed,
        "scenario": scenario_name,
        "strategies": strategies,
        "capital": _money(capital),
        "days": [d.as_dict() for d in result.days],
        "trades": len(trades),
        "wins": len(wins),
        "losses": len(losses),
        "win_rate": round(len(wins) / len(trades), 4) if trades else None,
        "gross_pnl": _money(gross),
        "charges": _money(charges),
        "net_pnl": _money(net),
        # R multiple: net P&L over the money at risk to the stop at entry.
        "avg_rr": round(float(statistics.fmean(float(t.net_pnl / t.risk_amount) for t in with_risk)), 4)
        if with_risk
        else None,
        "rr_trades": len(with_risk),
        "avg_win": _money(avg_win),
        "avg_loss": _money(avg_loss),
        "payoff_ratio": round(float(avg_win / -avg_loss), 4) if avg_win is not None and avg_loss else None,
        "signals": len(log["signals"]),
        "orders": len(log["orders"]),
        "fills": len(log["fills"]),
        "gate_refusals": len(log["gate_refusals"]),
        "open_positions_at_end": open_positions,
        **(equity_and_drawdown(trades, start, capital) if start else {"equity_curve": []}),
        "trade_list": log["trades"],
        "latency": latency(account, result),
        "slippage": slippage(account),
        "decision_hash": decision_hash(log),
    }
    return report
