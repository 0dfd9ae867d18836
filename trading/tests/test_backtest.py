from __future__ import annotations

import datetime as dt
import json
import re
import xml.etree.ElementTree as ET  # noqa: S405 -- parsing our own output in tests
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.urls import reverse

from marketdata.demo import ensure_demo_instruments
from marketdata.feeds.simulator import SimulatorFeed
from marketdata.models import ExchangeHoliday
from marketdata.storage import SnapshotWriter
from quanthub.clock import IST
from quanthub.roles import COMPLIANCE, RISK_MANAGER, TRADER
from risk.models import GateRefusal
from trading.backtest.report import _Ids, audit_rows, equity_and_drawdown, percentile
from trading.backtest.runner import NamespacedStrategy, trading_days
from trading.models import BacktestRun, Order, Signal, Strategy, Trade
from trading.strategies.base import FillEvent, OrderIntent
from trading.strategies.vol_oi.trader import Transition

DAY = dt.date(2026, 11, 23)  # a Monday
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def var_dir(tmp_path):
    with override_settings(VAR_DIR=tmp_path):
        yield tmp_path


@pytest.fixture
def vol_oi(db):
    ensure_demo_instruments(DAY)
    Strategy.objects.get_or_create(key="vol_oi", defaults={"name": "Volume-OI", "params": {}})
    return Strategy.objects.get(key="vol_oi")


def backtest(*args: str) -> BacktestRun:
    call_command("backtest", "--from", DAY.isoformat(), "--to", DAY.isoformat(), *args)
    return BacktestRun.objects.latest("pk")


# --- the command end to end ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_it_backtests_a_short_simulated_day_under_its_own_account(vol_oi, var_dir, tmp_path):
    vol_oi.state = {"trades": {}, "cooldown": {"live": "2026-11-23T09:00:00"}}
    vol_oi.save()
    extra = tmp_path / "out" / "report.json"
    run = backtest("--minutes", "5", "--strategy", "vol_oi", "--seed", "7", "--json", str(extra))

    report = run.report
    account = f"backtest-{run.pk}"
    assert run.finished_at is not None and report["account"] == account
    [day] = report["days"]
    assert day["source"] == "sim" and day["snapshots"] > 100 and day["trading_state_at_close"] == "ACTIVE"
    assert day["open_positions_at_close"] == report["open_positions_at_end"]
    # The default scenario's 09:16:30 NIFTY call is bought and taken off at the target within the five minutes.
    trades = list(Trade.objects.filter(account=account))
    assert report["trades"] == len(trades) >= 1
    gross, charges, net = (Decimal(report[k]) for k in ("gross_pnl", "charges", "net_pnl"))
    assert net == gross - charges
    assert gross == sum(t.gross_pnl for t in trades) and net == sum(t.net_pnl for t in trades)
    assert report["win_rate"] == round(sum(t.net_pnl > 0 for t in trades) / len(trades), 4)
    assert Decimal(report["equity_curve"][-1]["cumulative_net"]) == net
    assert Decimal(report["max_drawdown"]) >= 0
    assert report["orders"] == Order.objects.filter(account=account).count() > 0
    assert report["gate_refusals"] == GateRefusal.objects.filter(account=account).count()
    assert report["latency"]["tick_to_intent_ms"]["count"] > 0
    assert report["latency"]["snapshot_to_ack_ms"]["count"] == report["orders"]
    assert "ENTRY" in report["slippage"]["per_leg"]
    assert len(run.decision_hash) == 64 and report["decision_hash"] == run.decision_hash

    # The report is on disk twice: under VAR_DIR and where --json asked.
    stored = json.loads(Path(run.report_path).read_text(encoding="utf-8"))
    assert Path(run.report_path) == var_dir / "backtests" / f"{run.pk}.json"
    assert stored == report == json.loads(extra.read_text(encoding="utf-8"))

    # Isolation: nothing on the live account, signals under the run's namespace,
    # the live strategy state untouched.
    assert not Order.objects.filter(account="default").exists()
    assert Signal.objects.exists() and all(
        k.startswith(f"bt{run.pk}:vol_oi:") for k in Signal.objects.values_list("key", flat=True)
    )
    vol_oi.refresh_from_db()
    assert vol_oi.state == {"trades": {}, "cooldown": {"live": "2026-11-23T09:00:00"}}
    assert not vol_oi.enabled  # ran because --strategy asked, not switched on


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_same_data_and_seed_give_the_same_decision_hash(vol_oi, var_dir):
    first = backtest("--minutes", "3", "--strategy", "vol_oi", "--seed", "7")
    second = backtest("--minutes", "3", "--strategy", "vol_oi", "--seed", "7")
    other = backtest("--minutes", "3", "--strategy", "vol_oi", "--seed", "8")
    # Two runs over the same day do not share rows: each has its own signals and orders.
    assert Signal.objects.filter(key__startswith=f"bt{first.pk}:").count() == first.report["signals"] > 0
    assert Signal.objects.filter(key__startswith=f"bt{second.pk}:").count() == second.report["signals"]
    assert first.decision_hash == second.decision_hash
    assert first.report["net_pnl"] == second.report["net_pnl"]
    # Another seed is another market: other prices, other decisions.
    assert other.decision_hash != first.decision_hash


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_day_the_daily_loss_breaker_flattens_gives_the_same_decisions_on_every_run(vol_oi, var_dir):
    """The flatten is awaited in place in a backtest: the replayed market does not run on
    under it, so its exit prices, and the day's hash, are the same on every run."""
    from risk.models import BreakerTrip, RiskLimits
    from trading.backtest.runner import account_for

    limits = RiskLimits.active()
    limits.daily_loss_cap = Decimal("1.00")  # the first losing mark trips it
    limits.is_active = True
    limits.save()
    runs = [backtest("--minutes", "4", "--strategy", "vol_oi", "--seed", "7") for _ in range(2)]
    for run in runs:
        trip = BreakerTrip.objects.get(account=account_for(run.pk), breaker="daily_loss")
        assert "confirms" in trip.details["verdict"]
    kills = [
        list(
            Order.objects.filter(account=account_for(run.pk), purpose=Order.Purpose.KILL)
            .order_by("pk")
            .values_list("instrument__security_id", "side", "quantity", "limit_price", "created_at")
        )
        for run in runs
    ]
    assert kills[0] and kills[0] == kills[1]
    assert runs[0].decision_hash == runs[1].decision_hash


@pytest.mark.django_db(transaction=True)
def test_it_replays_a_recorded_day_when_there_is_one(vol_oi, var_dir):
    feed = SimulatorFeed(seed=3, scenario=None, trading_day=DAY, end_time=dt.time(9, 17))
    writer = SnapshotWriter()
    for item in feed.run_sync():
        writer.add(item)
    writer.flush(close_bars=True)
    run = backtest("--minutes", "1", "--strategy", "vol_oi")
    [day] = run.report["days"]
    assert day["source"] == "replay"
    # One minute of the two recorded: 20 chain snapshots per underlying, and no more.
    assert day["snapshots"] == 2 * (60 // 3 + 1)
    assert run.report["trades"] == 0 and run.report["net_pnl"] == "0.00"


# --- flags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "2026-11-24", "--to", "2026-11-23"], "--from 2026-11-24 is after --to 2026-11-23"),
        (["--from", "23/11/2026", "--to", "2026-11-23"], "--from takes YYYY-MM-DD, got '23/11/2026'"),
        (["--from", "2026-11-23", "--to", "2026-02-30"], "--to takes YYYY-MM-DD"),
        (["--from", "2026-11-23", "--to", "2026-11-23", "--scenario", "/nonexistent.json"], "Cannot read scenario"),
        (["--from", "2026-11-23", "--to", "2026-11-23", "--minutes", "0"], "--minutes must be between 1 and 375"),
        (["--from", "2026-11-28", "--to", "2026-11-29"], "No trading day between 2026-11-28 and 2026-11-29"),
        (["--from", "2026-11-23", "--to", "2026-11-23", "--strategy", "nope"], "--strategy nope: no such strategy"),
        (
            ["--from", "2026-11-23", "--to", "2026-11-23", "--source", "replay"],
            "no recorded option chains for 2026-11-23",
        ),
    ],
)
@pytest.mark.django_db
def test_bad_flags_stop_before_anything_runs(args, message):
    with pytest.raises(CommandError, match=message.replace("(", r"\(")):
        call_command("backtest", *args)
    assert not BacktestRun.objects.exists()


@pytest.mark.django_db
def test_it_asks_for_a_strategy_when_none_is_enabled():
    Strategy.objects.update(enabled=False)
    with pytest.raises(CommandError, match="No strategy is enabled; pass --strategy KEY"):
        call_command("backtest", "--from", "2026-11-23", "--to", "2026-11-23")


@pytest.mark.django_db
def test_a_scenario_that_is_not_json_is_refused(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text("{nope", encoding="utf-8")
    with pytest.raises(CommandError, match="is not valid JSON"):
        call_command("backtest", "--from", "2026-11-23", "--to", "2026-11-23", "--scenario", str(bad))


# --- the pieces -----------------------------------------------------------------------------


def test_it_skips_weekends_and_holidays():
    days = trading_days(dt.date(2026, 11, 20), dt.date(2026, 11, 25), holidays=[dt.date(2026, 11, 24)])
    assert days == [dt.date(2026, 11, 20), dt.date(2026, 11, 23), dt.date(2026, 11, 25)]
    assert trading_days(dt.date(2026, 11, 28), dt.date(2026, 11, 29)) == []


@pytest.mark.django_db
def test_the_command_reads_holidays_from_the_exchange_calendar():
    from trading.backtest.runner import nse_holidays

    ExchangeHoliday.objects.create(date=dt.date(2026, 11, 24), description="test holiday")
    assert nse_holidays(dt.date(2026, 11, 23), dt.date(2026, 11, 25)) == [dt.date(2026, 11, 24)]


class _Recorder:
    key = "rec"

    def __init__(self):
        self.seen = []
        self.transitions = [Transition("k1", "DETECTED", "PROBE", "why", dt.datetime(2026, 11, 23, 9, 16, tzinfo=IST))]
        self.entries_enabled = True

    def _intent(self, key):
        return OrderIntent("rec", "1", "BUY", 1, 75, "ENTRY", Decimal("10"), signal_key=key)

    def on_snapshot(self, snapshot):
        return [self._intent("k1"), self._intent(None)]

    def on_fill(self, event):
        self.seen.append(event.signal_key)
        return [self._intent(event.signal_key)]

    def on_refused(self, intent, reason, now):
        self.seen.append(intent.signal_key)


def test_the_namespace_wrapper_prefixes_keys_out_and_strips_them_in():
    inner = _Recorder()
    wrapped = NamespacedStrategy(inner, "bt5:")
    assert [i.signal_key for i in wrapped.on_snapshot(None)] == ["bt5:k1", None]
    assert [t.signal_key for t in wrapped.transitions] == ["bt5:k1"]
    wrapped.transitions = []
    assert inner.transitions == [] and wrapped.transitions == []
    fill = FillEvent(
        "rec", "bt5:k1", "1", "BUY", 75, Decimal("10"), dt.datetime(2026, 11, 23, tzinfo=IST), "ENTRY", True
    )
    assert [i.signal_key for i in wrapped.on_fill(fill)] == ["bt5:k1"]
    wrapped.on_refused(inner._intent("bt5:k1"), "no", None)
    assert inner.seen == ["k1", "k1"]  # the strategy only ever sees its own keys
    wrapped.entries_enabled = False
    assert inner.entries_enabled is False and wrapped.key == "rec"


class _T:
    def __init__(self, net, minute):
        self.net_pnl = Decimal(net)
        self.closed_at = dt.datetime(2026, 11, 23, 10, minute, tzinfo=IST)


def test_drawdown_is_the_deepest_fall_from_a_peak():
    start = dt.datetime(2026, 11, 23, 9, 15, tzinfo=IST)
    out = equity_and_drawdown([_T("100", 1), _T("-300", 2), _T("50", 3), _T("500", 4)], start, Decimal("1000"))
    assert [p["cumulative_net"] for p in out["equity_curve"]] == ["0.00", "100.00", "-200.00", "-150.00", "350.00"]
    assert out["max_drawdown"] == "300.00"
    assert out["max_drawdown_pct"] == str((Decimal(300) / Decimal(1100) * 100).quantize(Decimal("0.0001")))
    assert out["equity_curve"][1]["time"] == "2026-11-23T10:01:00+05:30"
    flat = equity_and_drawdown([], start, Decimal("1000"))
    assert flat["max_drawdown"] == "0.00" and len(flat["equity_curve"]) == 1


@pytest.mark.django_db
def test_the_decision_log_does_not_depend_on_which_engine_instance_wrote_it():
    from audit import chain
    from audit.models import AuditRecord

    for instance in ("engine:host-101-aaaaaa", "engine:host-202-bbbbbb"):
        chain.append("order.sent", actor=instance, subject="order:c1", payload={"price": "101.05"})
    chain.append("risk.limits_changed", actor="rm:asha", subject="order:c1")
    rows = audit_rows(AuditRecord.objects.all(), _Ids(0, "default", []))
    assert (
        rows[0]
        == rows[1]
        == {
            "action": "order.sent",
            "actor": "engine",
            "subject": "order:#?",
            "payload": {"price": "101.05"},
        }
    )
    assert rows[2]["actor"] == "rm:asha"


def test_percentiles_interpolate_between_ranks():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([0.0, 10.0], 90) == 9.0


# --- pages ----------------------------------------------------------------------------------


def _stored_run() -> BacktestRun:
    report = {
        "account": "backtest-x",
        "trades": 2,
        "wins": 1,
        "losses": 1,
        "win_rate": 0.5,
        "gross_pnl": "120.00",
        "charges": "20.00",
        "net_pnl": "100.00",
        "max_drawdown": "40.00",
        "max_drawdown_pct": "0.0016",
        "equity_curve": [
            {"time": "2026-11-23T09:15:00+05:30", "cumulative_net": "0.00"},
            {"time": "2026-11-23T09:20:00+05:30", "cumulative_net": "-40.00"},
            {"time": "2026-11-23T09:25:00+05:30", "cumulative_net": "100.00"},
        ],
        "trade_list": [
            {"instrument": "<b>1</b>", "net_pnl": "-40.00", "closed_at": "2026-11-23T09:20:00+05:30"},
            {"instrument": "2", "net_pnl": "140.00", "closed_at": "2026-11-23T09:25:00+05:30"},
        ],
        "latency": {"tick_to_intent_ms": {"count": 3, "values": [1.0, 2.0, 9.5], "clock": "wall"}},
        "slippage": {"per_leg": {"ENTRY": {"ticks": {"count": 2, "values": [0.0, 1.0]}, "rupees": {}}}},
        "days": [{"day": "2026-11-23", "source": "sim"}],
    }
    return BacktestRun.objects.create(
        date_from=DAY, date_to=DAY, seed=7, report=report, decision_hash="ab" * 32, finished_at=dt.datetime.now(tz=IST)
    )


@pytest.mark.django_db
def test_backtest_pages_need_a_login(client):
    run = _stored_run()
    for url in (reverse("trading:backtests"), reverse("trading:backtest_detail", args=[run.pk])):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]


@pytest.mark.django_db
def test_a_user_without_a_role_is_refused(client, make_user):
    client.force_login(make_user("nobody"))
    assert client.get(reverse("trading:backtests")).status_code == 403


@pytest.mark.parametrize("role", [TRADER, RISK_MANAGER, COMPLIANCE])
@pytest.mark.django_db
def test_every_role_sees_the_list_and_the_report_with_its_charts(client, make_user, role):
    run = _stored_run()
    client.force_login(make_user("u", role))
    listing = client.get(reverse("trading:backtests"))
    assert listing.status_code == 200
    assert reverse("trading:backtest_detail", args=[run.pk]) in listing.content.decode()
    page = client.get(reverse("trading:backtest_detail", args=[run.pk]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "ab" * 32 in html and "&lt;b&gt;1&lt;/b&gt;" in html
    svgs = [ET.fromstring(svg) for svg in re.findall(r"<svg.*?</svg>", html, re.S)]  # noqa: S314
    assert len(svgs) == 4
    equity = svgs[0]
    assert equity.find(f"{SVG}polyline") is not None and equity.find(f"{SVG}polygon") is not None  # drawdown shaded
    assert len(list(svgs[1].iter(f"{SVG}circle"))) == 2  # one dot per trade


@pytest.mark.django_db
def test_an_unknown_backtest_is_404(client, trader):
    client.force_login(trader)
    assert client.get(reverse("trading:backtest_detail", args=[999_999])).status_code == 404


@pytest.mark.django_db
def test_a_failed_run_shows_its_error(client, trader):
    run = BacktestRun.objects.create(date_from=DAY, date_to=DAY, report={"error": "RuntimeError: boom"})
    client.force_login(trader)
    html = client.get(reverse("trading:backtest_detail", args=[run.pk])).content.decode()
    assert "The run failed: RuntimeError: boom" in html and "<svg" not in html


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("cap", [None, "2000.00"], ids=["plain", "daily-loss-trips"])
def test_a_day_decides_the_same_whether_its_marks_are_written_every_second_or_when_read(
    vol_oi, var_dir, monkeypatch, cap
):
    """The same simulated day twice: once writing every mark at its second
    (``MARKS_WRITE_S`` = 0, as live), once letting marks wait for the next statement,
    as a backtest at full speed does. The same decisions (hash), the same trades (their
    risk from the marked stop), the same final marks; far fewer marks written. With a
    ₹2,000 daily-loss cap a losing mark half a minute into the probe trips the breaker:
    at the same moment."""
    from risk.models import BreakerTrip, RiskLimits
    from trading import writes
    from trading.backtest.runner import account_for
    from trading.engine import engine as engine_module
    from trading.models import Position

    if cap is not None:
        limits = RiskLimits.active()
        limits.daily_loss_cap = Decimal(cap)
        limits.is_active = True
        limits.save()

    def day(window: float):
        monkeypatch.setattr(engine_module, "MARKS_WRITE_S", window)
        before = writes.generation((writes.MARKS,))
        run = backtest("--minutes", "6", "--strategy", "vol_oi", "--seed", "7")
        account = account_for(run.pk)
        trades = list(
            Trade.objects.filter(account=account)
            .order_by("closed_at", "pk")
            .values_list("closed_at", "quantity", "entry_price", "exit_price", "net_pnl", "risk_amount")
        )
        marks = sorted(
            Position.objects.filter(account=account).values_list(
                "instrument__security_id", "net_quantity", "last_price", "unrealised_pnl", "stop_price", "target_price"
            )
        )
        trips = list(
            BreakerTrip.objects.filter(account=account, breaker="daily_loss").values_list("tripped_at", flat=True)
        )
        return run.decision_hash, trades, marks, trips, writes.generation((writes.MARKS,)) - before

    *every_second, written_every_second = day(0.0)
    *waiting, written_waiting = day(3600.0)
    assert every_second[1] or every_second[3], "a trade closed or the breaker tripped"
    assert (cap is not None) == bool(every_second[3])
    assert waiting == every_second
    assert written_waiting < written_every_second / 3, (written_waiting, written_every_second)
