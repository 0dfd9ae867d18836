"""Fan-out backtests: one task per (day, parameter set), on Celery or a local process pool.

A fan-out run is a ``BacktestRun`` with one ``BacktestTask`` per trading day and
parameter set of its grid. Every task is an independent one-day session that
starts flat, with empty strategy state, under its own account namespace
(``backtest-<run>T<task>A<attempt>``: its orders, signals, positions, trading
state and paper account are its own, and a retried attempt starts clean). Day
*i* runs on seed + *i* as in a sequential backtest. So a task's decision hash
depends only on (day, seed, parameters, data, risk limits), never on which
worker ran it, in which order or next to what: running the tasks on Celery, on
the local pool or one after another in one process gives the same per-day
hashes (tested, and measured by ``benchmarks/backtest_scale.py``).

Where the tasks run:

* with ``REDIS_URL`` (PostgreSQL in production): Celery, ``trading.backtest_task``,
  on any number of workers on any number of machines; workers write their
  rows to the shared database; a failed task is retried (``MAX_ATTEMPTS``);
* on the embedded default (SQLite): a local process pool of ``workers``
  processes. SQLite takes one writer at a time, so each pool process works in
  its **own SQLite file**, a copy of the main database taken when the process
  starts (``VAR_DIR/backtests/pool-<run>/``); it sends its task's report back
  to the parent, which alone writes to the main database (results, progress).
  The scratch copies (with the tasks' orders and fills) are deleted when the
  run ends; the reports keep everything the pages show;
* ``workers=0``: one after another in this process (tests, and the sequential
  reference the benchmark compares with).

Cancelling a run (``cancel``) marks it CANCELLED: tasks not yet started are
skipped, running ones stop at their next check (about once a second).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import functools
import hashlib
import itertools
import json
import logging
import multiprocessing
import shutil
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.db.models import Count, F
from django.utils import timezone

from marketdata.models import Instrument
from trading.backtest import pool, runner
from trading.backtest.report import build_report
from trading.models import BacktestRun, BacktestTask

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
CANCEL_CHECK_S = 1.0
Run = BacktestRun.Status
State = BacktestTask.State


# --- the grid ------------------------------------------------------------------------


class GridError(ValueError):
    pass


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid(items: Iterable[str]) -> list[dict[str, Any]]:
    """``["a=1,2", "b=x"]`` → every combination, in order: [{a:1,b:"x"}, {a:2,b:"x"}]."""
    keys, values = [], []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise GridError(f"--grid takes key=v1,v2,…; got {item!r}")
        if key in keys:
            raise GridError(f"--grid {key} is given twice")
        keys.append(key)
        values.append([_value(v.strip()) for v in raw.split(",") if v.strip()])
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)] or [{}]


def check_params(param_sets: list[dict], strategies: Iterable[str], source: str) -> None:
    """Refuse parameters a strategy does not take (before anything runs)."""
    from trading.strategies.config import StrategyConfigError
    from trading.strategies.registry import get_strategy_class

    for key in strategies:
        cls = get_strategy_class(key)
        for params in param_sets:
            try:
                cls.config_class.from_params(strategy_params(params, source))
            except StrategyConfigError as exc:
                raise GridError(f"{key}: {exc}") from None


def strategy_params(params: dict, source: str) -> dict:
    """On bars the grid speaks minute-named parameters (``marketdata.feeds.bars``)."""
    if source == "bars":
        from marketdata.feeds.bars import strategy_params_for_bars

        return strategy_params_for_bars(params)
    return dict(params)


# --- one task ------------------------------------------------------------------------


def namespace(run_id: int, task_id: int, attempt: int) -> str:
    # [A-Z0-9] only: it ends up in client order ids (BT<ns>N<n>), valid Dhan correlation ids.
    return f"{run_id}T{task_id}A{attempt}"


class TaskEngine(runner.BacktestEngine):
    """The backtest engine with a task's parameters, its day's instruments and a cancel check."""

    def __init__(
        self,
        *,
        params: dict,
        instrument_ids: list[str] | None,
        cancelled: Callable[[], bool],
        timings: dict[str, float] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.params = params
        self.instrument_ids = instrument_ids
        self.cancelled = cancelled
        self.timings = timings if timings is not None else {}

    def _load_instruments(self) -> None:
        if self.instrument_ids is None:
            super()._load_instruments()
        else:
            # Exactly the day's instruments, active or not: other tasks (other days) may
            # load another day's master meanwhile, and expired contracts are inactive.
            self._use_instruments(
                list(Instrument.objects.filter(security_id__in=self.instrument_ids).select_related("underlying"))
            )
        self.broker.know(self.instruments.values())

    def _load_strategies(self) -> None:
        super()._load_strategies()
        if not self.params:
            return
        for loaded in self.strategies:
            cls = type(loaded.strategy._inner)
            # The run's frozen parameters (read once when it started), else the row's.
            base = self.frozen_params.get(loaded.key) or (loaded.row.params if loaded.row is not None else {})
            loaded.strategy.configure(cls.config_class.from_params({**(base or {}), **self.params}))

    async def run(self):
        watcher = asyncio.create_task(self._watch())
        try:
            return await super().run()
        finally:
            watcher.cancel()

    # When the session's first item can be taken and when its last was done: what lies
    # outside is the task's fixed cost (``timings`` in its report).
    async def start(self) -> None:
        await super().start()
        self.timings["session_start"] = time.perf_counter()

    async def shutdown(self) -> None:
        self.timings.setdefault("session_end", time.perf_counter())
        await super().shutdown()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CANCEL_CHECK_S)
            if await sync_to_async(self.cancelled, thread_sensitive=True)():
                log.info("backtest task cancelled", extra={"engine": self.engine_id})
                self.stop()
                return


def instrument_ids(source: str, day: dt.date) -> list[str] | None:
    """The instruments a task of ``day`` trades (None: the active master, for replays)."""
    if source == "sim":
        from marketdata import synthetic

        holidays = runner.nse_holidays(day - dt.timedelta(days=60), day + dt.timedelta(days=60))
        return [c.security_id for c in synthetic.build_master(day, holidays)]
    if source == "bars":
        from marketdata.feeds.bars import day_instruments

        ids = day_instruments(day)
        underlyings = Instrument.objects.filter(security_id__in=ids).values("underlying")
        index = Instrument.objects.filter(underlying__in=underlyings, kind=Instrument.Kind.INDEX)
        return sorted(set(ids) | set(index.values_list("security_id", flat=True)))
    return None


def _run_cancelled(run_id: int) -> bool:
    return BacktestRun.objects.filter(pk=run_id, status=Run.CANCELLED).exists()


def _scenario(options: dict):
    from marketdata.scenarios import Scenario

    source = options.get("scenario", "default")
    return Scenario.load(None if source == "none" else source)


def _compact(report: dict) -> dict:
    """What the aggregate and the pages need from one task's report (no long series)."""
    latency = report.get("latency", {}).get("tick_to_intent_ms", {})
    keep = [
        "trades",
        "wins",
        "losses",
        "win_rate",
        "gross_pnl",
        "charges",
        "net_pnl",
        "avg_rr",
        "payoff_ratio",
        "signals",
        "orders",
        "fills",
        "gate_refusals",
        "open_positions_at_end",
        "equity_curve",
        "max_drawdown",
        "max_drawdown_pct",
        "trade_list",
        "decision_hash",
    ]
    out = {k: report.get(k) for k in keep}
    out["day"] = report["days"][0] if report.get("days") else {}
    out["tick_to_intent_ms"] = {k: latency.get(k) for k in ("count", "p50", "p99", "max")}
    return out


def execute(
    task_id: int, *, attempt: int, cancelled: Callable[[], bool] | None = None, prefetch: bool | None = False
) -> dict:
    """Run one task in this process's database and return its compact report.

    ``prefetch``: whether a simulated day's items are made ahead in a process of their
    own. Off for tasks on workers (they fill the machine's cores between them); the
    sequential run in one process leaves it to the machine (None).

    Its ``timings``: ``session_s``, the engine's session from its first feed item to its
    last, and ``fixed_s``, everything else the task spent (loading the task and its day's
    instruments, the engine's start-up and wind-down, the report).
    """
    began = time.perf_counter()
    timings: dict[str, float] = {}
    task = BacktestTask.objects.select_related("run").get(pk=task_id)
    run = task.run
    options = run.options
    source = options.get("source", "sim")
    ns = namespace(run.pk, task.pk, attempt)
    check = cancelled or functools.partial(_run_cancelled, run.pk)
    factory = functools.partial(
        TaskEngine,
        params=strategy_params(task.params, source),
        instrument_ids=instrument_ids(source, task.day),
        cancelled=check,
        timings=timings,
    )
    scenario = _scenario(options)
    plan = runner.Plan(
        run_id=ns,  # the namespace stands in for the run id in accounts, signal keys and order ids
        days=[task.day],
        seed=run.seed + task.day_index,
        scenario=scenario,
        strategies=tuple(options.get("strategies", ())),
        source=source,
        minutes=options.get("minutes"),
        engine_factory=factory,
        prepared=True,
        prefetch=prefetch,
    )
    result = asyncio.run(runner.run(plan))
    stub = SimpleNamespace(pk=ns, date_from=task.day, date_to=task.day, seed=run.seed + task.day_index)
    report = build_report(stub, result, scenario_name=scenario.name, strategies=list(plan.strategies))
    out = _compact(report)
    out["cancelled"] = check()
    total = time.perf_counter() - began
    session = timings.get("session_end", began) - timings.get("session_start", began)
    out["timings"] = {"total_s": round(total, 4), "session_s": round(session, 4), "fixed_s": round(total - session, 4)}
    return out


def claim(task_id: int, *, recover: bool = False) -> int | None:
    """PENDING or FAILED → RUNNING, once; returns the attempt number, None if not ours to run.

    ``recover``: the queue redelivered the task because the worker running it died, so a
    RUNNING task is taken over too (as a new attempt, in a fresh namespace).
    """
    task = BacktestTask.objects.filter(pk=task_id).values("run__status", "attempts", "state").first()
    if task is None:
        return None
    if task["run__status"] == Run.CANCELLED:
        BacktestTask.objects.filter(pk=task_id, state__in=[State.PENDING, State.FAILED]).update(
            state=State.CANCELLED, finished_at=timezone.now()
        )
        return None
    if task["attempts"] >= MAX_ATTEMPTS:
        return None
    claimable = [State.PENDING, State.FAILED, State.RUNNING] if recover else [State.PENDING, State.FAILED]
    updated = BacktestTask.objects.filter(pk=task_id, state__in=claimable, attempts=task["attempts"]).update(
        state=State.RUNNING, attempts=F("attempts") + 1, started_at=timezone.now(), error=""
    )
    return task["attempts"] + 1 if updated else None


def record(task_id: int, outcome: dict | None, error: str = "") -> None:
    """Store a task's outcome (conditional on it running) and finish the run when it was the last."""
    if outcome is not None:
        state = State.CANCELLED if outcome.get("cancelled") else State.DONE
        BacktestTask.objects.filter(pk=task_id, state=State.RUNNING).update(
            state=state, result=outcome, decision_hash=outcome.get("decision_hash") or "", finished_at=timezone.now()
        )
    else:
        BacktestTask.objects.filter(pk=task_id, state=State.RUNNING).update(
            state=State.FAILED, error=error[-4000:], finished_at=timezone.now()
        )
    run_id = BacktestTask.objects.filter(pk=task_id).values_list("run_id", flat=True).first()
    if run_id is not None:
        maybe_finish(run_id)


def run_task(task_id: int, *, recover: bool = False, prefetch: bool | None = False) -> str:
    """Claim, run and record one task in this process's database (Celery workers, inline)."""
    attempt = claim(task_id, recover=recover)
    if attempt is None:
        return "skipped"
    try:
        outcome = execute(task_id, attempt=attempt, prefetch=prefetch)
    except Exception:  # a failed task is recorded and retried, never lost
        log.exception("backtest task failed", extra={"task": task_id, "attempt": attempt})
        record(task_id, None, traceback.format_exc())
        return "failed"
    record(task_id, outcome)
    return "done"


def retryable(task_id: int) -> bool:
    return BacktestTask.objects.filter(pk=task_id, state=State.FAILED, attempts__lt=MAX_ATTEMPTS).exists()


# --- the run -------------------------------------------------------------------------


def create_run(
    *,
    date_from: dt.date,
    date_to: dt.date,
    days: list[dt.date],
    seed: int,
    strategies: list[str],
    source: str,
    scenario: str = "default",
    minutes: int | None = None,
    param_sets: list[dict] | None = None,
    workers: int = 0,
    label: str = "",
) -> BacktestRun:
    param_sets = param_sets or [{}]
    options = {
        "mode": "fanout",
        "source": source,
        "scenario": scenario,
        "minutes": minutes,
        "strategies": sorted(strategies),
        "param_sets": param_sets,
        "workers": workers,
        "label": label,
    }
    run = BacktestRun.objects.create(
        date_from=date_from,
        date_to=date_to,
        seed=seed,
        scenario={"source": scenario},
        status=Run.PENDING,
        options=options,
        tasks_total=len(days) * len(param_sets),
    )
    BacktestTask.objects.bulk_create(
        BacktestTask(run=run, day=day, day_index=i, param_index=p, params=params)
        for p, params in enumerate(param_sets)
        for i, day in enumerate(days)
    )
    return run


def prepare(run: BacktestRun) -> None:
    """Create every simulated day's instruments before any task runs (tasks never load a
    master: two loads at once would fight over the same rows). A day whose instruments all
    exist is skipped; tasks use their day's rows whether active or not."""
    from marketdata.demo import ensure_demo_instruments

    if run.options.get("source") != "sim":
        return
    for day in sorted(set(run.tasks.values_list("day", flat=True))):
        ids = instrument_ids("sim", day) or []
        if Instrument.objects.filter(security_id__in=ids).count() < len(set(ids)):
            ensure_demo_instruments(day)


def progress(run_id: int) -> dict[str, int]:
    counts = dict.fromkeys(State.values, 0)
    for state, n in BacktestTask.objects.filter(run_id=run_id).values_list("state").annotate(n=Count("pk")):
        counts[state] = n
    counts["total"] = sum(counts[s] for s in State.values)
    counts["finished"] = counts[State.DONE] + counts[State.FAILED] + counts[State.CANCELLED]
    return counts


def cancel(run: BacktestRun) -> bool:
    updated = BacktestRun.objects.filter(pk=run.pk, status__in=[Run.PENDING, Run.RUNNING]).update(status=Run.CANCELLED)
    BacktestTask.objects.filter(run=run, state=State.PENDING).update(state=State.CANCELLED, finished_at=timezone.now())
    if updated:
        maybe_finish(run.pk)
    return bool(updated)


def maybe_finish(run_id: int) -> bool:
    """When no task is left to run: aggregate once (a conditional update picks who)."""
    open_tasks = BacktestTask.objects.filter(run_id=run_id, state__in=[State.PENDING, State.RUNNING])
    failed_retryable = BacktestTask.objects.filter(run_id=run_id, state=State.FAILED, attempts__lt=MAX_ATTEMPTS)
    status = BacktestRun.objects.filter(pk=run_id).values_list("status", flat=True).first()
    if open_tasks.exists() or (status != Run.CANCELLED and failed_retryable.exists()):
        return False
    if not BacktestRun.objects.filter(pk=run_id, finished_at__isnull=True).update(finished_at=timezone.now()):
        return False
    run = BacktestRun.objects.get(pk=run_id)
    report = aggregate(run)
    final = run.status if run.status == Run.CANCELLED else (Run.FAILED if report["failed_tasks"] else Run.DONE)
    path = Path(settings.VAR_DIR) / "backtests" / f"{run.pk}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    BacktestRun.objects.filter(pk=run_id).update(
        report=report, decision_hash=report["decision_hash"], report_path=str(path), status=final
    )
    return True


# --- aggregation -----------------------------------------------------------------------


def _d(value) -> Decimal:
    return Decimal(value or "0")


def _money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


def _summary(days: list[dict], capital: Decimal) -> dict[str, Any]:
    """Totals over days, the equity across days (each day's curve continued from the
    previous day's end) and its deepest drawdown."""
    trades = sum(d["trades"] or 0 for d in days)
    wins = sum(d["wins"] or 0 for d in days)
    net = sum((_d(d["net_pnl"]) for d in days), Decimal(0))
    points, equity, peak, max_dd, max_dd_pct = [], Decimal(0), Decimal(0), Decimal(0), Decimal(0)
    for d in days:
        start = equity
        for p in d.get("equity_curve") or []:
            value = start + _d(p["cumulative_net"])
            points.append({"time": p["time"], "cumulative_net": _money(value)})
            peak = max(peak, value)
            if peak - value > max_dd:
                max_dd = peak - value
                base = capital + peak
                max_dd_pct = max_dd / base * 100 if base > 0 else Decimal(0)
        equity = start + _d(d["net_pnl"])
    return {
        "trades": trades,
        "wins": wins,
        "losses": sum(d["losses"] or 0 for d in days),
        "win_rate": round(wins / trades, 4) if trades else None,
        "gross_pnl": _money(sum((_d(d["gross_pnl"]) for d in days), Decimal(0))),
        "charges": _money(sum((_d(d["charges"]) for d in days), Decimal(0))),
        "net_pnl": _money(net),
        "equity_curve": points,
        "max_drawdown": _money(max_dd),
        "max_drawdown_pct": str(max_dd_pct.quantize(Decimal("0.0001"))),
        "signals": sum(d["signals"] or 0 for d in days),
        "orders": sum(d["orders"] or 0 for d in days),
        "fills": sum(d["fills"] or 0 for d in days),
        "gate_refusals": sum(d["gate_refusals"] or 0 for d in days),
        "best_day": max((d["net_pnl"] for d in days), key=_d, default=None),
        "worst_day": min((d["net_pnl"] for d in days), key=_d, default=None),
    }


def aggregate(run: BacktestRun) -> dict[str, Any]:
    options = run.options
    capital = Decimal(settings.QUANTHUB_PAPER_CAPITAL)
    param_sets = options.get("param_sets") or [{}]
    tasks = list(run.tasks.order_by("param_index", "day"))
    sets = []
    hashes = {}
    for index, params in enumerate(param_sets):
        mine = [t for t in tasks if t.param_index == index]
        days = []
        for t in mine:
            if t.state != State.DONE:
                continue
            r = t.result
            hashes[f"{index}:{t.day.isoformat()}"] = t.decision_hash
            days.append(
                {
                    "day": t.day.isoformat(),
                    "source": (r.get("day") or {}).get("source"),
                    "seed": (r.get("day") or {}).get("seed"),
                    "trading_state_at_close": (r.get("day") or {}).get("trading_state_at_close"),
                    **{k: r.get(k) for k in ("trades", "wins", "losses", "gross_pnl", "charges", "net_pnl")},
                    **{k: r.get(k) for k in ("max_drawdown", "signals", "orders", "fills", "gate_refusals")},
                    "equity_curve": r.get("equity_curve") or [],
                    "decision_hash": t.decision_hash,
                    "attempts": t.attempts,
                }
            )
        summary = _summary(days, capital)
        for d in days:
            d.pop("equity_curve")
        sets.append(
            {
                "index": index,
                "params": params,
                "days": days,
                "failed_days": [t.day.isoformat() for t in mine if t.state == State.FAILED],
                "cancelled_days": [t.day.isoformat() for t in mine if t.state == State.CANCELLED],
                **summary,
            }
        )
    keys = list(param_sets[0]) if param_sets and param_sets[0] else []
    first = sets[0] if sets else {}
    source = options.get("source")
    report = {
        "id": run.pk,
        "mode": "fanout",
        "resolution": "1m bars" if source == "bars" else "feed snapshots",
        "source": source,
        "date_from": run.date_from.isoformat(),
        "date_to": run.date_to.isoformat(),
        "seed": run.seed,
        "strategies": options.get("strategies"),
        "capital": _money(capital),
        "grid_keys": keys,
        "param_sets": sets,
        "tasks": len(tasks),
        "failed_tasks": sum(1 for t in tasks if t.state == State.FAILED),
        "cancelled_tasks": sum(1 for t in tasks if t.state == State.CANCELLED),
        "decision_hashes": hashes,
        # One hash over the per-task hashes in (parameter set, day) order.
        "decision_hash": hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest(),
        # The first parameter set's figures at the top level, as a one-set run reads.
        **{k: first.get(k) for k in ("trades", "wins", "losses", "win_rate", "gross_pnl", "charges", "net_pnl")},
        **{k: first.get(k) for k in ("equity_curve", "max_drawdown", "max_drawdown_pct", "signals", "orders")},
        **{k: first.get(k) for k in ("fills", "gate_refusals")},
        "trade_list": [
            trade
            for t in tasks
            if t.param_index == 0 and t.state == State.DONE
            for trade in t.result.get("trade_list") or []
        ],
    }
    if source == "bars":
        from marketdata.feeds.bars import BarFillModel

        report["bars"] = {
            "sees": "one bar per contract per minute, at its close: close, volume and OI minute deltas, IV, spot",
            "cannot_see": "anything inside a minute: the 2-second mid jump, quotes, sizes, spreads",
            "fills": BarFillModel().as_dict(),
        }
    if len(keys) == 2:
        report["heatmap"] = heatmap(sets, keys)
    return report


def heatmap(sets: list[dict], keys: list[str]) -> dict[str, Any]:
    xs = sorted({json.dumps(s["params"][keys[0]]) for s in sets}, key=lambda v: _sortable(json.loads(v)))
    ys = sorted({json.dumps(s["params"][keys[1]]) for s in sets}, key=lambda v: _sortable(json.loads(v)))
    cells = {(json.dumps(s["params"][keys[0]]), json.dumps(s["params"][keys[1]])): s["net_pnl"] for s in sets}
    return {
        "x": keys[0],
        "y": keys[1],
        "xs": [json.loads(x) for x in xs],
        "ys": [json.loads(y) for y in ys],
        "net_pnl": [[cells.get((x, y)) for x in xs] for y in ys],
    }


def _sortable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, int | float) else (1, 0, str(value))


# --- dispatch --------------------------------------------------------------------------


def start(run: BacktestRun) -> None:
    BacktestRun.objects.filter(pk=run.pk, status=Run.PENDING).update(status=Run.RUNNING)


def run_celery(run: BacktestRun) -> int:
    """Queue every pending task on Celery; workers do the rest (and finish the run)."""
    from trading.tasks import backtest_task

    prepare(run)
    start(run)
    ids = list(run.tasks.filter(state=State.PENDING).values_list("pk", flat=True))
    for task_id in ids:
        backtest_task.delay(task_id)
    return len(ids)


def run_inline(run: BacktestRun, on_progress: Callable[[dict], None] | None = None) -> None:
    """Every task in this process, one after another (with retries)."""
    prepare(run)
    start(run)
    for task_id in list(run.tasks.order_by("param_index", "day").values_list("pk", flat=True)):
        while run_task(task_id, prefetch=None) == "failed" and retryable(task_id):
            pass
        if on_progress is not None:
            on_progress(progress(run.pk))
    maybe_finish(run.pk)


def run_pool(run: BacktestRun, workers: int, on_progress: Callable[[dict], None] | None = None) -> None:
    """Every task on ``workers`` local processes; only this process writes the main database."""
    if connection.vendor != "sqlite":
        raise RuntimeError("the local pool is for the embedded SQLite default; with PostgreSQL use Redis and Celery")
    prepare(run)
    start(run)
    main_path = str(settings.DATABASES["default"]["NAME"])
    scratch = Path(settings.VAR_DIR) / "backtests" / f"pool-{run.pk}"
    scratch.mkdir(parents=True, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    pending = list(run.tasks.filter(state=State.PENDING).order_by("param_index", "day").values_list("pk", flat=True))
    try:
        with concurrent.futures.ProcessPoolExecutor(
            max_workers=max(1, workers), mp_context=context, initializer=pool.init, initargs=(main_path, str(scratch))
        ) as executor:
            futures: dict[concurrent.futures.Future, int] = {}

            def submit(task_id: int) -> None:
                attempt = claim(task_id)
                if attempt is not None:
                    futures[executor.submit(pool.execute, task_id, run.pk, attempt)] = task_id

            for task_id in pending:
                submit(task_id)
            while futures:
                done, _ = concurrent.futures.wait(list(futures), return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    task_id = futures.pop(future)
                    try:
                        record(task_id, future.result())
                    except Exception:  # the task's failure, reported back from its process
                        record(task_id, None, traceback.format_exc())
                        if retryable(task_id):
                            submit(task_id)
                if on_progress is not None:
                    on_progress(progress(run.pk))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    maybe_finish(run.pk)


def run(run: BacktestRun, *, workers: int | None, on_progress: Callable[[dict], None] | None = None) -> str:
    """Execute a run; returns how ("celery", "pool", "inline").

    ``workers=0`` always runs the tasks here, one after another, Redis or not: it is the
    caller asking for this process, and it needs no Celery worker to be listening (with
    Redis, queued tasks would wait for a worker of this database, and a worker started for
    another database would not find them). Otherwise the installation decides: Celery with
    ``REDIS_URL``, else a local pool of ``workers`` processes (None: one after another here).
    """
    if workers == 0:
        run_inline(run, on_progress)
        return "inline"
    if settings.REDIS_URL:
        run_celery(run)
        return "celery"
    if not workers:
        run_inline(run, on_progress)
        return "inline"
    run_pool(run, workers, on_progress)
    return "pool"


NO_WORKER = (
    "No Celery worker answers on REDIS_URL, so nobody would run the tasks: start one (celery -A quanthub worker)"
)


def celery_workers(timeout_s: float = 1.0) -> list[str]:
    """The names of the Celery workers answering a ping now (empty: nobody would run the tasks)."""
    from quanthub.celery import app

    replies = app.control.ping(timeout=timeout_s) or []
    return sorted(name for reply in replies for name in reply)


def wait(run_id: int, *, on_progress: Callable[[dict], None] | None = None, poll_s: float = 0.5) -> BacktestRun:
    """Until the run is finished (Celery runs finish on the workers)."""
    while True:
        state = progress(run_id)
        if on_progress is not None:
            on_progress(state)
        finished = BacktestRun.objects.filter(pk=run_id).exclude(report={}).exists()
        if finished:
            return BacktestRun.objects.get(pk=run_id)
        time.sleep(poll_s)


def launch(run: BacktestRun, *, workers: int) -> None:
    """From the page: on Celery, queue the tasks; on the embedded default, a background thread."""
    if settings.REDIS_URL:
        run_celery(run)
        return
    threading.Thread(target=_background, args=(run.pk, workers), daemon=True, name=f"backtest-{run.pk}").start()


def _background(run_id: int, workers: int) -> None:
    try:
        run(BacktestRun.objects.get(pk=run_id), workers=workers)
    except Exception:
        log.exception("backtest run failed", extra={"run": run_id})
        BacktestRun.objects.filter(pk=run_id).update(
            status=Run.FAILED, report={"error": traceback.format_exc()[-2000:]}
        )
    finally:
        connection.close()
