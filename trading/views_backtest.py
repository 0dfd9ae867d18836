"""Backtest pages: the list of runs, one run's report with its charts, a form
that starts a fan-out run, its live progress, cancelling it, and a side-by-side
comparison of two runs (or two parameter sets of one grid).

Every role reads; traders and risk managers start and cancel runs (compliance
only reads). Charts are server-rendered SVG from ``trading.charts`` built from
the stored report, so a page never re-runs or re-queries the backtest. The
progress panel is a partial of the run's page: htmx polls the page itself
(``request.htmx``) about once a second while tasks run.
"""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from quanthub.roles import RISK_MANAGER, ROLES, TRADER, has_role
from trading import charts
from trading.backtest import fanout, runner
from trading.models import BacktestRun, Strategy

MAX_TASKS = 2000  # one form submission cannot queue more than this


def _allowed(request) -> None:
    if not has_role(request.user, *ROLES):
        raise PermissionDenied("Backtests are for traders, risk managers and compliance.")


def _may_run(request) -> bool:
    return has_role(request.user, TRADER, RISK_MANAGER)


@require_GET
@login_required
def backtest_list(request):
    _allowed(request)
    runs = BacktestRun.objects.all()[:200]
    return render(request, "trading/backtest_list.html", _list_context(request, runs))


def _list_context(request, runs, form=None, errors=None) -> dict:
    return {
        "runs": runs,
        "may_run": _may_run(request),
        "form": form or {"source": "sim", "workers": "2", "strategy": "vol_oi"},
        "errors": errors or [],
        "strategies": list(Strategy.objects.values_list("key", flat=True)),
        "sources": [s for s in runner.SOURCES if s != "auto"],
        "celery": bool(settings.REDIS_URL),
    }


def _parse_start(data) -> tuple[dict, list[str]]:
    """The form's fields, checked as ``manage.py backtest`` checks its flags."""
    errors: list[str] = []
    form = {k: (data.get(k) or "").strip() for k in ("date_from", "date_to", "source", "minutes", "grid", "workers")}
    form["strategy"] = (data.get("strategy") or "").strip()
    plan: dict = {}
    try:
        date_from, date_to = dt.date.fromisoformat(form["date_from"]), dt.date.fromisoformat(form["date_to"])
    except ValueError:
        return form, ["Give both days as YYYY-MM-DD."]
    if date_from > date_to:
        errors.append("The first day is after the last.")
    source = form["source"] or "sim"
    if source not in runner.SOURCES or source == "auto":
        errors.append(f"Unknown data source {source!r}.")
    minutes = None
    if form["minutes"]:
        try:
            minutes = int(form["minutes"])
        except ValueError:
            minutes = -1
        if not 0 < minutes <= 375:
            errors.append("Minutes must be between 1 and 375.")
    try:
        workers = int(form["workers"] or 0)
    except ValueError:
        workers = -1
    if not 0 <= workers <= 64:
        errors.append("Workers must be between 0 and 64.")
    if not Strategy.objects.filter(key=form["strategy"]).exists():
        errors.append(f"No strategy {form['strategy']!r}.")
    try:
        param_sets = fanout.parse_grid(line for line in form["grid"].splitlines() if line.strip())
        if not errors:
            fanout.check_params(param_sets, [form["strategy"]], source)
    except fanout.GridError as exc:
        errors.append(str(exc))
        param_sets = [{}]
    if errors:
        return form, errors
    days = runner.trading_days(date_from, date_to, runner.nse_holidays(date_from, date_to))
    if source == "bars":
        from marketdata.history import has_bars

        days = [d for d in days if has_bars(d)]
    elif source == "replay":
        days = [d for d in days if runner.has_recorded_chains(d)]
    if not days:
        errors.append(f"No trading day with {source} data between {date_from} and {date_to}.")
    elif len(days) * len(param_sets) > MAX_TASKS:
        errors.append(f"{len(days) * len(param_sets)} tasks is more than {MAX_TASKS}; narrow the range or the grid.")
    plan = {"days": days, "source": source, "minutes": minutes, "workers": workers, "param_sets": param_sets}
    return {**form, **plan}, errors


@require_POST
@login_required
def backtest_start(request):
    _allowed(request)
    if not _may_run(request):
        raise PermissionDenied("Only traders and risk managers start backtests.")
    form, errors = _parse_start(request.POST)
    if not errors and settings.REDIS_URL and not fanout.celery_workers():
        # On Redis the page queues on Celery: with no worker listening the run would wait for ever.
        errors.append(f"{fanout.NO_WORKER}.")
    if errors:
        runs = BacktestRun.objects.all()[:200]
        return render(request, "trading/backtest_list.html", _list_context(request, runs, form, errors), status=400)
    run = fanout.create_run(
        date_from=form["days"][0],
        date_to=form["days"][-1],
        days=form["days"],
        seed=settings.QUANTHUB_SEED,
        strategies=[form["strategy"]],
        source=form["source"],
        minutes=form["minutes"],
        param_sets=form["param_sets"],
        workers=form["workers"],
        label=f"started by {request.user.get_username()}",
    )
    fanout.launch(run, workers=form["workers"])
    return redirect("trading:backtest_detail", pk=run.pk)


@require_POST
@login_required
def backtest_cancel(request, pk: int):
    _allowed(request)
    if not _may_run(request):
        raise PermissionDenied("Only traders and risk managers cancel backtests.")
    run = get_object_or_404(BacktestRun, pk=pk)
    fanout.cancel(run)
    return redirect("trading:backtest_detail", pk=run.pk)


def _time(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def _equity_chart(report: dict, title: str = "Cumulative net P&L (₹), drawdowns shaded") -> str:
    points, labels = [], []
    for p in report.get("equity_curve", []):
        when = _time(p.get("time"))
        if when is None:
            continue
        points.append((when.timestamp(), float(p["cumulative_net"])))
        labels.append(when.strftime("%d %b %H:%M"))
    ends = (labels[0], labels[-1]) if labels else None
    return charts.line_chart(points, title=title, drawdown=True, x_labels=ends)


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


def _progress_context(run: BacktestRun) -> dict:
    counts = fanout.progress(run.pk)
    total = counts["total"] or 1
    return {
        "run": run,
        "counts": counts,
        "percent": round(counts["finished"] * 100 / total),
        "live": run.status in (BacktestRun.Status.PENDING, BacktestRun.Status.RUNNING) or not run.report,
    }


def _equity_of(points: list[dict], title: str) -> str:
    return _equity_chart({"equity_curve": points}, title)


def _fanout_detail(request, run: BacktestRun):
    progress = _progress_context(run)
    if request.htmx:
        response = render(request, "trading/backtest_fanout.html#progress", {**progress, "may_run": _may_run(request)})
        if not progress["live"]:
            response["HX-Refresh"] = "true"  # finished: load the whole report once
        return response
    report = run.report or {}
    sets = report.get("param_sets", [])
    heat = report.get("heatmap")
    context = {
        **progress,
        "report": report,
        "sets": sets,
        "may_run": _may_run(request),
        "equity_svgs": [
            (s, _equity_of(s.get("equity_curve", []), f"Set {s['index']}: cumulative net P&L across days (₹)"))
            for s in sets
        ],
        "heatmap_svg": charts.heatmap(
            heat["xs"],
            heat["ys"],
            [[None if v is None else float(v) for v in row] for row in heat["net_pnl"]],
            x_name=heat["x"],
            y_name=heat["y"],
            title="Net P&L (₹) by parameter",
        )
        if heat
        else "",
        "others": BacktestRun.objects.exclude(pk=run.pk).exclude(report={})[:50],
    }
    return render(request, "trading/backtest_fanout.html", context)


@require_GET
@login_required
def backtest_detail(request, pk: int):
    _allowed(request)
    run = get_object_or_404(BacktestRun, pk=pk)
    if run.options.get("mode") == "fanout":
        return _fanout_detail(request, run)
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


COMPARED = (
    ("trades", "Trades"),
    ("win_rate", "Win rate"),
    ("gross_pnl", "Gross P&L (₹)"),
    ("charges", "Charges (₹)"),
    ("net_pnl", "Net P&L (₹)"),
    ("max_drawdown", "Max drawdown (₹)"),
    ("max_drawdown_pct", "Max drawdown (%)"),
    ("signals", "Signals"),
    ("orders", "Orders"),
    ("gate_refusals", "Gate refusals"),
)


def _side(ref: str) -> dict:
    """``12`` (a run; its first parameter set) or ``12.1`` (parameter set 1 of run 12)."""
    run_part, _, set_part = ref.partition(".")
    try:
        run = BacktestRun.objects.get(pk=int(run_part))
        index = int(set_part or 0)
    except (ValueError, BacktestRun.DoesNotExist):
        raise Http404(f"No backtest {ref!r}") from None
    report = run.report or {}
    sets = report.get("param_sets")
    if sets:
        if not 0 <= index < len(sets):
            raise Http404(f"Backtest {run.pk} has no parameter set {index}")
        figures = sets[index]
        days = {d["day"]: d.get("net_pnl") for d in figures.get("days", [])}
        params = figures.get("params", {})
    else:
        figures = report
        days = {}
        params = {}
    return {
        "ref": f"{run.pk}.{index}" if sets else str(run.pk),
        "run": run,
        "params": params,
        "resolution": report.get("resolution", "feed snapshots"),
        "figures": figures,
        "days": days,
        "equity_svg": _equity_of(figures.get("equity_curve") or [], f"{run.pk}: cumulative net P&L (₹)"),
    }


@require_GET
@login_required
def backtest_compare(request):
    _allowed(request)
    a, b = request.GET.get("a", ""), request.GET.get("b", "")
    if not a or not b:
        raise Http404("Compare needs ?a=RUN[.SET]&b=RUN[.SET]")
    left, right = _side(a), _side(b)
    rows = [(label, left["figures"].get(key), right["figures"].get(key)) for key, label in COMPARED]
    day_rows = [
        (day, left["days"].get(day), right["days"].get(day)) for day in sorted(set(left["days"]) | set(right["days"]))
    ]
    return render(
        request, "trading/backtest_compare.html", {"left": left, "right": right, "rows": rows, "day_rows": day_rows}
    )
