"""Backtest pages: the list of runs and one run's report with its charts.

Read-only, for any of the three roles. Charts are server-rendered SVG from
``trading.charts`` built from the stored report, so a page never re-runs or
re-queries the backtest.
"""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from quanthub.roles import ROLES, has_role
from trading import charts
from trading.models import BacktestRun


def _allowed(request) -> None:
    if not has_role(request.user, *ROLES):
        raise PermissionDenied("Backtests are for traders, risk managers and compliance.")


@require_GET
@login_required
def backtest_list(request):
    _allowed(request)
    runs = BacktestRun.objects.all()[:200]
    return render(request, "trading/backtest_list.html", {"runs": runs})


def _time(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def _equity_chart(report: dict) -> str:
    points, labels = [], []
    for p in report.get("equity_curve", []):
        when = _time(p.get("time"))
        if when is None:
            continue
        points.append((when.timestamp(), float(p["cumulative_net"])))
        labels.append(when.strftime("%d %b %H:%M"))
    ends = (labels[0], labels[-1]) if labels else None
    return charts.line_chart(points, title="Cumulative net P&L (₹), drawdowns shaded", drawdown=True, x_labels=ends)


def _trade_scatter(report: dict) -> str:
    points, labels = [], []
    for t in report.get("trade_list", []):
        when = _time(t.get("closed_at"))
        if when is None or t.get("net_pnl") is None:
            continue
        points.append((when.timestamp(), float(t["net_pnl"])))
        labels.append(when.strftime("%d %b %H:%M"))
    ends = (min(labels), max(labels)) if labels else None
    return charts.scatter(points, title="Net P&L per trade (₹) by close time", x_labels=ends)


@require_GET
@login_required
def backtest_detail(request, pk: int):
    _allowed(request)
    run = get_object_or_404(BacktestRun, pk=pk)
    report = run.report or {}
    latency = report.get("latency", {})
    wall = latency.get("tick_to_intent_ms", {})
    simulated = latency.get("snapshot_to_ack_ms", {})
    legs = report.get("slippage", {}).get("per_leg", {})
    slippage_ticks = [v for leg in legs.values() for v in leg.get("ticks", {}).get("values", [])]
    context = {
        "run": run,
        "report": report,
        "legs": sorted(legs.items()),
        "wall_latency": wall,
        "simulated_latency": simulated,
        "equity_svg": _equity_chart(report),
        "scatter_svg": _trade_scatter(report),
        "latency_svg": charts.histogram(wall.get("values", []), unit="ms", title="Tick → intent, wall clock (ms)"),
        "slippage_svg": charts.histogram(slippage_ticks, unit="ticks", title="Slippage per filled leg (ticks)"),
    }
    return render(request, "trading/backtest_detail.html", context)
