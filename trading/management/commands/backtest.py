"""manage.py backtest --from YYYY-MM-DD --to YYYY-MM-DD [--scenario FILE|default|none] [--seed N]
[--json PATH] [--minutes N] [--source auto|replay|sim|bars] [--strategy KEY ...]
[--grid KEY=V1,V2 ...] [--workers N]

Runs the trading engine over every trading day of the range (weekends and
NSE holidays skipped): on the recorded chains of a day when there are any,
on the seeded simulator otherwise, with the paper broker at full speed,
under an account of its own. Writes the report to the BacktestRun row and
to VAR_DIR/backtests/<id>.json. Every flag is checked before anything runs.

With ``--grid`` or ``--workers`` (and always with ``--source bars``) the run fans
out: one task per (day, parameter set), each day an independent session under
its own account, on Celery with ``REDIS_URL`` or a local pool of N processes
(``trading.backtest.fanout``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from marketdata.scenarios import Scenario, ScenarioError
from quanthub.progress import ProgressBar
from trading.backtest import fanout, runner
from trading.backtest.report import build_report
from trading.models import BacktestRun, Strategy

SESSION_MINUTES = 375


def _date(flag: str, value: str):
    import datetime as dt

    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{flag} takes YYYY-MM-DD, got {value!r}") from None


class Command(BaseCommand):
    help = "Backtest the enabled strategies over a range of days (recorded data or the simulator, paper broker)."

    def add_arguments(self, parser):
        parser.add_argument("--from", dest="date_from", required=True, help="First day (YYYY-MM-DD).")
        parser.add_argument("--to", dest="date_to", required=True, help="Last day, inclusive (YYYY-MM-DD).")
        parser.add_argument(
            "--scenario", default="default", help="Simulator scenario for simulated days: a JSON file, default or none."
        )
        parser.add_argument("--seed", type=int, default=None, help="Simulator seed of the first day (day i: seed + i).")
        parser.add_argument("--json", dest="json_path", default=None, help="Also write the report to this file.")
        parser.add_argument(
            "--minutes", type=int, default=None, help="Only the first N minutes of each session (default: all 375)."
        )
        parser.add_argument(
            "--source",
            choices=runner.SOURCES,
            default="auto",
            help="auto: recorded chains when a day has any, else the simulator (default).",
        )
        parser.add_argument(
            "--strategy",
            dest="strategies",
            action="append",
            default=None,
            help="Strategy key to run (repeatable). Default: the enabled strategies.",
        )
        parser.add_argument(
            "--grid",
            action="append",
            default=None,
            help="Parameter grid, repeatable: KEY=V1,V2 (one task per day and combination).",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=None,
            help="Fan out over N local processes (embedded default). With REDIS_URL the Celery workers "
            "run the tasks. 0 = one after another in this process, with or without Redis.",
        )

    def handle(self, *args, **options):
        date_from = _date("--from", options["date_from"])
        date_to = _date("--to", options["date_to"])
        if date_from > date_to:
            raise CommandError(f"--from {date_from} is after --to {date_to}")
        minutes = options["minutes"]
        if minutes is not None and not 0 < minutes <= SESSION_MINUTES:
            raise CommandError(f"--minutes must be between 1 and {SESSION_MINUTES}, got {minutes}")
        scenario_source = options["scenario"]
        try:
            scenario = Scenario.load(None if scenario_source == "none" else scenario_source)
        except ScenarioError as exc:
            raise CommandError(str(exc)) from None
        days = runner.trading_days(date_from, date_to, runner.nse_holidays(date_from, date_to))
        if not days:
            raise CommandError(f"No trading day between {date_from} and {date_to} (weekends and NSE holidays)")
        if options["source"] == "replay":
            missing = [d.isoformat() for d in days if not runner.has_recorded_chains(d)]
            if missing:
                raise CommandError(f"--source replay: no recorded option chains for {', '.join(missing)}")
        if options["source"] == "bars":
            from marketdata.history import has_bars

            days = [d for d in days if has_bars(d)]
            if not days:
                raise CommandError(f"--source bars: no imported minute bars between {date_from} and {date_to}")
        strategies = self._strategies(options["strategies"])
        json_path = Path(options["json_path"]) if options["json_path"] else None
        if json_path is not None and json_path.is_dir():
            raise CommandError(f"--json {json_path} is a directory; give a file path")
        seed = options["seed"] if options["seed"] is not None else settings.QUANTHUB_SEED
        workers = options["workers"]
        if workers is not None and workers < 0:
            raise CommandError(f"--workers must be 0 or more, got {workers}")
        if options["grid"] or workers is not None or options["source"] == "bars":
            if options["source"] == "auto":
                options["source"] = "sim"
            try:
                param_sets = fanout.parse_grid(options["grid"] or [])
                fanout.check_params(param_sets, strategies, options["source"])
            except fanout.GridError as exc:
                raise CommandError(str(exc)) from None
            return self._fan_out(days, seed, strategies, options, param_sets, workers, scenario_source, json_path)

        run = BacktestRun.objects.create(
            date_from=date_from,
            date_to=date_to,
            seed=seed,
            scenario={"source": scenario_source, "name": scenario.name, "events": len(scenario.events)},
        )
        plan = runner.Plan(
            run_id=run.pk,
            days=days,
            seed=seed,
            scenario=scenario,
            strategies=tuple(strategies),
            source=options["source"],
            minutes=minutes,
        )
        self.stdout.write(
            f"Backtest {run.pk}: {len(days)} trading day(s) {date_from} → {date_to}, seed {seed}, "
            f"strategies {', '.join(strategies)}, account {runner.account_for(run.pk)}."
        )
        try:
            result = asyncio.run(self._run(plan))
        except BaseException as exc:
            run.report = {"error": f"{type(exc).__name__}: {exc}"}
            run.finished_at = timezone.now()
            run.save(update_fields=["report", "finished_at"])
            raise
        report = build_report(
            run, result, scenario_name=None if scenario_source == "none" else scenario.name, strategies=strategies
        )
        path = Path(settings.VAR_DIR) / "backtests" / f"{run.pk}.json"
        self._write(path, report)
        if json_path is not None:
            self._write(json_path, report)
        run.report = report
        run.decision_hash = report["decision_hash"]
        run.report_path = str(path)
        run.finished_at = timezone.now()
        run.save(update_fields=["report", "decision_hash", "report_path", "finished_at"])
        self.stdout.write(
            f"Backtest {run.pk} finished: {report['trades']} trades, net ₹{report['net_pnl']} "
            f"(gross ₹{report['gross_pnl']}, charges ₹{report['charges']}), "
            f"max drawdown ₹{report.get('max_drawdown', '0.00')}; decision hash {report['decision_hash'][:16]}…; "
            f"report {path}"
        )

    def _fan_out(self, days, seed, strategies, options, param_sets, workers, scenario_source, json_path):
        on_celery = bool(settings.REDIS_URL) and workers != 0
        if on_celery and not fanout.celery_workers():
            raise CommandError(f"{fanout.NO_WORKER} or pass --workers 0 to run them here, one after another")
        run = fanout.create_run(
            date_from=days[0],
            date_to=days[-1],
            days=days,
            seed=seed,
            strategies=strategies,
            source=options["source"],
            scenario=scenario_source,
            minutes=options["minutes"],
            param_sets=param_sets,
            workers=workers or 0,
        )
        where = "Celery workers" if on_celery else (f"{workers} local process(es)" if workers else "this process")
        self.stdout.write(
            f"Backtest {run.pk}: {len(days)} day(s) × {len(param_sets)} parameter set(s) = {run.tasks_total} task(s) "
            f"on {where}, source {options['source']}, seed {seed}, strategies {', '.join(strategies)}."
        )
        bar = ProgressBar(run.tasks_total, stream=self.stdout, label=f"backtest {run.pk}")

        def show(state):
            bar.update(state["finished"], note=f"{state['FAILED']} failed" if state["FAILED"] else "")

        try:
            fanout.run(run, workers=workers, on_progress=show)
            run = fanout.wait(run.pk, on_progress=show)
        except KeyboardInterrupt:
            fanout.cancel(run)
            raise CommandError(f"Backtest {run.pk} cancelled") from None
        bar.finish()
        report = run.report
        if json_path is not None:
            self._write(json_path, report)
        for item in report["param_sets"]:
            label = ", ".join(f"{k}={v}" for k, v in item["params"].items()) or "parameters as configured"
            self.stdout.write(
                f"  [{item['index']}] {label}: {item['trades']} trades, net ₹{item['net_pnl']}, "
                f"max drawdown ₹{item['max_drawdown']}, {len(item['days'])} day(s)"
                + (f", failed {', '.join(item['failed_days'])}" if item["failed_days"] else "")
            )
        self.stdout.write(
            f"Backtest {run.pk} {run.status.lower()}: {report['tasks']} task(s), {report['failed_tasks']} failed; "
            f"decision hash {report['decision_hash'][:16]}…; report {run.report_path}"
        )
        if run.status == BacktestRun.Status.FAILED:
            raise CommandError(f"Backtest {run.pk}: {report['failed_tasks']} task(s) failed after retries")

    @staticmethod
    async def _run(plan):
        return await runner.run(plan)

    @staticmethod
    def _strategies(chosen: list[str] | None) -> list[str]:
        from trading.strategies.registry import UnknownStrategy, get_strategy_class

        rows = dict(Strategy.objects.values_list("key", "enabled"))
        if chosen:
            for key in chosen:
                if key not in rows:
                    try:
                        get_strategy_class(key)
                    except UnknownStrategy:
                        raise CommandError(f"--strategy {key}: no such strategy") from None
                    raise CommandError(f"--strategy {key}: not set up in the database (add it in the admin)")
            return sorted(set(chosen))
        enabled = sorted(key for key, on in rows.items() if on)
        if not enabled:
            raise CommandError("No strategy is enabled; pass --strategy KEY (e.g. --strategy vol_oi)")
        return enabled

    @staticmethod
    def _write(path: Path, report: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
