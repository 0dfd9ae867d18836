"""Fan-out backtests: one task per (day, parameter set), equal to a sequential run."""

from __future__ import annotations

import datetime as dt
import io

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from audit.models import AuditRecord
from marketdata.demo import ensure_demo_instruments
from quanthub.clock import IST, SESSION_OPEN
from risk.models import TradingState
from risk.services import set_trading_state
from trading.backtest import fanout, runner
from trading.models import BacktestRun, BacktestTask, Order, Strategy

DAYS = [dt.date(2026, 11, 23), dt.date(2026, 11, 24)]


@pytest.fixture
def var_dir(tmp_path):
    with override_settings(VAR_DIR=tmp_path):
        yield tmp_path


@pytest.fixture
def vol_oi(db):
    ensure_demo_instruments(DAYS[0])
    Strategy.objects.get_or_create(key="vol_oi", defaults={"name": "Volume-OI", "params": {}})
    return Strategy.objects.get(key="vol_oi")


def new_run(param_sets=None, minutes=4) -> BacktestRun:
    return fanout.create_run(
        date_from=DAYS[0],
        date_to=DAYS[-1],
        days=DAYS,
        seed=7,
        strategies=["vol_oi"],
        source="sim",
        minutes=minutes,
        param_sets=param_sets,
    )


def test_a_grid_is_every_combination_and_unknown_parameters_are_refused():
    assert fanout.parse_grid(["probe_lots=1,2", "hedge_with_future=true,false"]) == [
        {"probe_lots": 1, "hedge_with_future": True},
        {"probe_lots": 1, "hedge_with_future": False},
        {"probe_lots": 2, "hedge_with_future": True},
        {"probe_lots": 2, "hedge_with_future": False},
    ]
    assert fanout.parse_grid([]) == [{}]
    with pytest.raises(fanout.GridError, match="key=v1"):
        fanout.parse_grid(["probe_lots"])
    with pytest.raises(fanout.GridError, match="unknown parameter"):
        fanout.check_params([{"no_such": 1}], ["vol_oi"], "sim")
    with pytest.raises(fanout.GridError, match="at most"):
        fanout.check_params([{"probe_lots": 1000}], ["vol_oi"], "sim")
    fanout.check_params([{"minute_jump_pct": 0.5, "minute_volume_window": 12}], ["vol_oi"], "bars")


@pytest.mark.django_db(transaction=True)
def test_each_task_gives_the_hash_of_a_sequential_one_day_run(vol_oi, var_dir):
    run = new_run()
    fanout.run_inline(run)
    run.refresh_from_db()
    assert run.status == BacktestRun.Status.DONE and run.tasks_total == 2
    tasks = list(run.tasks.order_by("day"))
    assert [t.state for t in tasks] == ["DONE", "DONE"] and all(t.decision_hash for t in tasks)
    # Each task traded under its own account, never under the run's.
    accounts = set(Order.objects.values_list("account", flat=True))
    assert accounts <= {f"backtest-{fanout.namespace(run.pk, t.pk, 1)}" for t in tasks}
    # The reference: the old sequential runner, one day at a time, each on its own run id.
    for index, (day, task) in enumerate(zip(DAYS, tasks, strict=True)):
        reference = BacktestRun.objects.create(date_from=day, date_to=day, seed=7 + index)
        plan = runner.Plan(
            run_id=reference.pk, days=[day], seed=7 + index, scenario="default", strategies=("vol_oi",), minutes=4
        )
        import asyncio

        from trading.backtest.report import build_report

        result = asyncio.run(runner.run(plan))
        report = build_report(reference, result, scenario_name="default", strategies=["vol_oi"])
        assert report["decision_hash"] == task.decision_hash, day
    report = run.report
    assert report["mode"] == "fanout" and report["failed_tasks"] == 0
    assert report["decision_hashes"] == {f"0:{t.day}": t.decision_hash for t in tasks}
    assert [d["day"] for d in report["param_sets"][0]["days"]] == [d.isoformat() for d in DAYS]


@pytest.mark.django_db(transaction=True)
def test_a_failed_task_is_retried_under_a_fresh_namespace(vol_oi, var_dir, monkeypatch):
    run = new_run(minutes=2)
    real = fanout.execute
    seen = []

    def flaky(task_id, *, attempt, cancelled=None, prefetch=False):
        seen.append(attempt)
        if attempt == 1:
            raise RuntimeError("worker lost its database connection")
        return real(task_id, attempt=attempt, cancelled=cancelled, prefetch=prefetch)

    monkeypatch.setattr(fanout, "execute", flaky)
    fanout.run_inline(run)
    run.refresh_from_db()
    assert run.status == BacktestRun.Status.DONE
    assert [t.attempts for t in run.tasks.all()] == [2, 2] and seen == [1, 2, 1, 2]


@pytest.mark.django_db(transaction=True)
def test_a_task_failing_every_attempt_fails_the_run_and_says_which_day(vol_oi, var_dir, monkeypatch):
    run = new_run(minutes=2)

    def broken(task_id, *, attempt, cancelled=None, prefetch=False):
        if BacktestTask.objects.get(pk=task_id).day == DAYS[1]:
            raise RuntimeError("bad day")
        return {
            "trades": 0,
            "wins": 0,
            "losses": 0,
            "net_pnl": "0",
            "gross_pnl": "0",
            "charges": "0",
            "signals": 0,
            "orders": 0,
            "fills": 0,
            "gate_refusals": 0,
            "equity_curve": [],
            "decision_hash": "x",
            "day": {},
        }

    monkeypatch.setattr(fanout, "execute", broken)
    fanout.run_inline(run)
    run.refresh_from_db()
    assert run.status == BacktestRun.Status.FAILED
    failed = run.tasks.get(day=DAYS[1])
    assert failed.attempts == fanout.MAX_ATTEMPTS and "bad day" in failed.error
    assert run.report["param_sets"][0]["failed_days"] == [DAYS[1].isoformat()]


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_run_stops_its_tasks(vol_oi, var_dir):
    run = new_run(minutes=2)
    fanout.start(run)
    assert fanout.cancel(run)
    fanout.run_inline(run)
    run.refresh_from_db()
    assert run.status == BacktestRun.Status.CANCELLED
    assert set(run.tasks.values_list("state", flat=True)) == {"CANCELLED"}
    assert not Order.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_running_task_stops_when_its_run_is_cancelled(vol_oi, var_dir, monkeypatch):
    monkeypatch.setattr(fanout, "CANCEL_CHECK_S", 0.05)
    run = new_run(minutes=60)
    fanout.start(run)
    task = run.tasks.order_by("day").first()
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) >= 2

    assert fanout.claim(task.pk) == 1
    outcome = fanout.execute(task.pk, attempt=1, cancelled=cancelled)
    assert outcome["cancelled"] is True
    assert outcome["day"]["snapshots"] < 60 * 20  # stopped long before an hour of 3-second chains


@pytest.mark.django_db(transaction=True)
def test_the_command_fans_out_a_grid_with_a_progress_bar(vol_oi, var_dir, tmp_path):
    out = io.StringIO()
    call_command(
        "backtest",
        "--from",
        "2026-11-23",
        "--to",
        "2026-11-24",
        "--minutes",
        "2",
        "--strategy",
        "vol_oi",
        "--grid",
        "probe_lots=1,2",
        "--workers",
        "0",
        "--json",
        str(tmp_path / "grid.json"),
        stdout=out,
    )
    text = out.getvalue()
    assert "2 day(s) × 2 parameter set(s) = 4 task(s)" in text and "4/4 100.0%" in text
    assert "[0] probe_lots=1" in text and "[1] probe_lots=2" in text
    run = BacktestRun.objects.latest("pk")
    assert run.report["grid_keys"] == ["probe_lots"] and len(run.report["param_sets"]) == 2
    with pytest.raises(CommandError, match="unknown parameter"):
        call_command(
            "backtest", "--from", "2026-11-23", "--to", "2026-11-23", "--strategy", "vol_oi", "--grid", "nope=1"
        )


@pytest.mark.django_db(transaction=True)
def test_workers_0_runs_here_even_with_redis_and_no_listening_worker_is_a_clear_error(vol_oi, var_dir, monkeypatch):
    """With Redis, ``--workers 0`` still runs the tasks in this process: queued on Celery they
    would wait for a worker of this database. Without it, the command asks Celery first and
    says so when no worker would run the tasks, instead of waiting for ever."""
    monkeypatch.setattr(fanout, "run_celery", lambda run: pytest.fail("--workers 0 queued on Celery"))
    monkeypatch.setattr(fanout, "celery_workers", lambda: [])
    args = ["backtest", "--from", "2026-11-23", "--to", "2026-11-23", "--minutes", "1", "--strategy", "vol_oi"]
    out = io.StringIO()
    with override_settings(REDIS_URL="redis://127.0.0.1:6379/15"):
        call_command(*args, "--workers", "0", stdout=out)
        assert "1 task(s) on this process" in out.getvalue() and "1/1 100.0%" in out.getvalue()
        assert BacktestRun.objects.get().status == BacktestRun.Status.DONE
        with pytest.raises(CommandError, match="No Celery worker answers on REDIS_URL"):
            call_command(*args, "--grid", "probe_lots=1,2", stdout=io.StringIO())
    assert BacktestRun.objects.count() == 1  # nothing was queued for nobody


@pytest.mark.django_db(transaction=True)
def test_a_daily_loss_halt_is_lifted_at_the_next_session_open_in_a_backtest(vol_oi, var_dir):
    """The engine's start-up and its session-open check call the rollover: a HALT until
    this session's open returns to ACTIVE with an audit record once the session opens."""
    day = DAYS[1]
    opening = dt.datetime.combine(day, SESSION_OPEN, tzinfo=IST)
    run = BacktestRun.objects.create(date_from=day, date_to=day, seed=7)
    account = runner.account_for(run.pk)
    set_trading_state(
        "HALTED", actor="breaker:daily_loss", reason="daily net loss", account=account, halted_until=opening
    )
    plan = runner.Plan(run_id=run.pk, days=[day], seed=7, scenario="default", strategies=("vol_oi",), minutes=1)
    import asyncio

    result = asyncio.run(runner.run(plan))
    assert result.days[0].trading_state == "ACTIVE"
    state = TradingState.objects.get(account=account)
    engine = f"engine:backtest-{run.pk}-{day:%Y%m%d}"
    assert state.actor == engine and state.reason.startswith("session open: ") and state.halted_until is None
    record = AuditRecord.objects.filter(
        subject=f"account:{account}", actor=engine, payload__reason__startswith="session open"
    ).get()
    assert record.payload["old"] == "HALTED" and record.payload["new"] == "ACTIVE"


@pytest.mark.django_db(transaction=True)
def test_tasks_on_workers_never_make_their_items_ahead_and_the_sequential_run_leaves_it_to_the_machine(
    vol_oi, var_dir, monkeypatch
):
    """Workers fill the machine's cores between them: a task's simulator stays in its
    process. One after another in one process, a spare core may generate the items."""
    from marketdata.feeds import simulator

    asked = []
    real = simulator.SimulatorFeed.__init__

    def init(self, *args, prefetch=None, **kwargs):
        if kwargs.get("clock") is not None:  # a day's feed (not the previous session's VIX path)
            asked.append(prefetch)
        real(self, *args, prefetch=prefetch, **kwargs)

    monkeypatch.setattr(simulator.SimulatorFeed, "__init__", init)
    run = new_run(minutes=1)
    task = run.tasks.order_by("day").first()
    fanout.claim(task.pk)
    fanout.execute(task.pk, attempt=1)  # as the Celery task and the pool run it
    assert asked == [False]
    asked.clear()
    fanout.run_inline(new_run(minutes=1))
    assert asked == [None, None]
