"""Backtests on one-minute bars: the bar feed, its fill model, and a month of imported
Dhan history backtested from the page with live progress and a comparison."""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import pytest
import responses
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse

from marketdata.feeds.bars import BarFeed, BarFillModel, strategy_params_for_bars
from marketdata.feeds.base import ChainSnapshot, LtpTick
from marketdata.models import Instrument, MinuteBar, Underlying
from marketdata.tests.dhan_history import DhanHistoryServer
from quanthub.clock import IST
from trading.backtest import fanout
from trading.models import BacktestRun, Strategy

DAY = dt.date(2025, 11, 25)


@pytest.fixture
def var_dir(tmp_path):
    with override_settings(VAR_DIR=tmp_path):
        yield tmp_path


def test_the_fill_model_is_close_plus_half_a_typical_spread_on_the_tick():
    model = BarFillModel(spread_ticks=2, spread_pct=0.5)
    tick = Decimal("0.05")
    assert model.quote(Decimal("124.05"), tick) == (Decimal("123.70"), Decimal("124.40"))  # 0.5 % of 124 → 0.62 → 0.35
    assert model.quote(Decimal("3.00"), tick) == (Decimal("2.95"), Decimal("3.05"))  # two ticks is the floor
    assert model.quote(Decimal("0.05"), tick)[0] == tick  # a bid never goes below one tick


def test_minute_parameters_become_the_strategys_own_at_a_60_second_interval():
    assert strategy_params_for_bars({"minute_volume_window": 12, "minute_jump_pct": 0.8, "probe_lots": 1}) == {
        "volume_window_s": 720,
        "oi_window_s": 240,
        "jump_pct": 0.8,
        "probe_lots": 1,
        "interval_s": 60,
    }


@pytest.mark.django_db
def test_each_bar_reaches_the_strategy_at_its_close_with_minute_deltas(demo_market):
    nifty = Underlying.objects.get(symbol="NIFTY")
    template = Instrument.objects.filter(underlying=nifty, kind="CE").first()
    call = Instrument.objects.create(
        underlying=nifty,
        kind="CE",
        strike=Decimal("24500"),
        expiry=DAY,
        lot_size=template.lot_size,
        tick_size=template.tick_size,
        freeze_quantity=template.freeze_quantity,
        security_id="H13251125C24500",
        trading_symbol="h",
        is_active=False,
    )
    start = dt.datetime(2025, 11, 25, 9, 25, tzinfo=IST)
    for i, (close, volume, oi) in enumerate([(12405, 183300, 4411350), (12600, 97650, 4420125)]):
        minute = start + dt.timedelta(minutes=i)
        MinuteBar.objects.create(
            minute=minute,
            security_id=call.security_id,
            open_paise=close,
            high_paise=close + 50,
            low_paise=close - 50,
            close_paise=close,
            volume=volume,
            oi=oi,
            iv=13.4,
            spot_paise=2451235,
            source="dhan:rollingoption",
        )
    items = BarFeed(date=DAY).items()
    ticks = [i for i in items if isinstance(i, LtpTick)]
    chains = [i for i in items if isinstance(i, ChainSnapshot)]
    # No index bar: the index tick comes from the options' spot, one a minute.
    assert [t.exchange_time for t in ticks] == [start + dt.timedelta(minutes=1), start + dt.timedelta(minutes=2)]
    assert ticks[0].security_id == nifty.security_id and ticks[0].ltp == 24512.35
    first, second = chains
    assert first.exchange_time == start + dt.timedelta(minutes=1)  # delivered at the bar's close, never before
    assert first.last_price.tolist() == [124.05] and first.bid.tolist() == [123.95] and first.ask.tolist() == [124.15]
    assert second.volume.tolist() == [183300 + 97650]  # cumulative: the baselines see each bar's volume
    assert second.oi.tolist() == [4420125] and second.prev_oi.tolist() == [4411350]
    assert first.ask_qty.tolist() == [18330 // template.lot_size * template.lot_size]
    assert 0 < first.delta[0] < 1 and first.iv[0] == 13.4


@pytest.mark.django_db(transaction=True)
def test_a_month_of_imported_history_backtests_from_the_page_with_progress_and_a_comparison(
    demo_market, client, make_user, var_dir, settings, monkeypatch
):
    from quanthub.roles import TRADER

    settings.DHAN_CLIENT_ID, settings.DHAN_ACCESS_TOKEN = "1000000001", "test-access-token"
    monkeypatch.setattr("marketdata.history.time.sleep", lambda s: None)
    Strategy.objects.get_or_create(key="vol_oi", defaults={"name": "Volume-OI", "params": {}})
    server = DhanHistoryServer(minutes=20)
    with responses.RequestsMock() as api:
        server.install(api)
        call_command(
            "import_dhan_history",
            "--underlying",
            "NIFTY",
            "--from",
            "2025-11-03",
            "--to",
            "2025-11-28",
            "--strikes",
            "1",
            stdout=io.StringIO(),
        )
    assert MinuteBar.objects.filter(source="dhan:rollingoption").count() == 20 * 20 * 6

    client.force_login(make_user("trader1", TRADER))
    launched = []
    monkeypatch.setattr(fanout, "launch", lambda run, workers: launched.append((run.pk, workers)))
    monkeypatch.setattr(fanout, "celery_workers", lambda: ["celery@worker1"])  # on Redis, someone listens
    page = client.get(reverse("trading:backtests"))
    assert b'name="grid"' in page.content and b"Start backtest" in page.content
    response = client.post(
        reverse("trading:backtest_start"),
        {
            "date_from": "2025-11-01",
            "date_to": "2025-11-30",
            "source": "bars",
            "strategy": "vol_oi",
            "workers": "0",
            "grid": "minute_volume_spike_multiple=3,8",
        },
    )
    run = BacktestRun.objects.latest("pk")
    assert response.status_code == 302 and response["Location"] == reverse("trading:backtest_detail", args=[run.pk])
    assert launched == [(run.pk, 0)] and run.tasks_total == 40

    # Live progress: the page polls itself while the tasks run.
    panel = client.get(reverse("trading:backtest_detail", args=[run.pk]), headers={"HX-Request": "true"})
    assert b"0/40 tasks" in panel.content and b'hx-trigger="every 1s"' in panel.content
    assert "HX-Refresh" not in panel

    fanout.run(run, workers=0)  # what the launched background thread does on the embedded default
    panel = client.get(reverse("trading:backtest_detail", args=[run.pk]), headers={"HX-Request": "true"})
    assert b"40/40 tasks" in panel.content and b"hx-trigger" not in panel.content and panel["HX-Refresh"] == "true"

    run.refresh_from_db()
    report = run.report
    assert run.status == "DONE" and report["resolution"] == "1m bars" and report["failed_tasks"] == 0
    assert [s["params"] for s in report["param_sets"]] == [
        {"minute_volume_spike_multiple": 3},
        {"minute_volume_spike_multiple": 8},
    ]
    assert all(len(s["days"]) == 20 for s in report["param_sets"])
    # The daily bursts are seen at minute resolution and traded: entries filled at close + half a spread.
    assert report["param_sets"][0]["orders"] > 0 and report["param_sets"][0]["fills"] > 0
    page = client.get(reverse("trading:backtest_detail", args=[run.pk]))
    assert b"From one-minute bars" in page.content and b"minute_volume_spike_multiple=8" in page.content
    compare = client.get(reverse("trading:backtest_compare"), {"a": f"{run.pk}.0", "b": f"{run.pk}.1"})
    assert compare.status_code == 200
    assert f"Compare {run.pk}.0 with {run.pk}.1".encode() in compare.content
    assert report["param_sets"][0]["net_pnl"].encode() in compare.content
    assert report["param_sets"][1]["net_pnl"].encode() in compare.content


@pytest.mark.django_db
def test_only_traders_and_risk_managers_start_runs_and_bad_forms_say_why(client, make_user, monkeypatch):
    from quanthub.roles import COMPLIANCE, RISK_MANAGER

    Strategy.objects.get_or_create(key="vol_oi", defaults={"name": "Volume-OI", "params": {}})
    monkeypatch.setattr(fanout, "launch", lambda run, workers: pytest.fail("nothing may start"))
    client.force_login(make_user("compliance1", COMPLIANCE))
    assert b"Start backtest" not in client.get(reverse("trading:backtests")).content
    form = {"date_from": "2026-11-23", "date_to": "2026-11-24", "source": "sim", "strategy": "vol_oi"}
    assert client.post(reverse("trading:backtest_start"), form).status_code == 403
    client.force_login(make_user("risk1", RISK_MANAGER))
    bad = client.post(reverse("trading:backtest_start"), {**form, "grid": "no_such_param=1,2", "workers": "99"})
    assert bad.status_code == 400
    assert b"Workers must be between 0 and 64" in bad.content
    assert not BacktestRun.objects.exists()
    assert client.get(reverse("trading:backtest_compare"), {"a": "999", "b": "998"}).status_code == 404


@pytest.mark.django_db
def test_on_redis_the_page_refuses_a_run_no_celery_worker_would_take(client, make_user, monkeypatch):
    from quanthub.roles import TRADER

    Strategy.objects.get_or_create(key="vol_oi", defaults={"name": "Volume-OI", "params": {}})
    monkeypatch.setattr(fanout, "launch", lambda run, workers: pytest.fail("nothing may be queued"))
    monkeypatch.setattr(fanout, "celery_workers", lambda: [])
    client.force_login(make_user("trader1", TRADER))
    form = {"date_from": "2026-11-23", "date_to": "2026-11-23", "source": "sim", "strategy": "vol_oi", "workers": "2"}
    with override_settings(REDIS_URL="redis://127.0.0.1:6379/15"):
        refused = client.post(reverse("trading:backtest_start"), form)
    assert refused.status_code == 400
    assert b"No Celery worker answers on REDIS_URL" in refused.content
    assert not BacktestRun.objects.exists()
