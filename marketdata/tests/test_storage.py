from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, connections

from marketdata import retention
from marketdata.csvimport import ChainCsvError, parse
from marketdata.feeds.base import ROW_ARRAYS, ChainSnapshot, LtpTick
from marketdata.feeds.replay import ReplayFeed
from marketdata.feeds.simulator import SimulatorFeed
from marketdata.models import ChainQuote, DerivedMetric, LtpQuote, MinuteBar
from marketdata.storage import SnapshotWriter, load_chain_history, load_session
from quanthub.clock import IST, SimulatedClock

DAY = dt.date(2026, 11, 23)
ARRAYS = (*ROW_ARRAYS, "flags")


def _record(minutes=2, scenario="default", day=DAY):
    feed = SimulatorFeed(
        seed=5,
        scenario=scenario,
        trading_day=day,
        end_time=(dt.datetime(2026, 1, 1, 9, 15) + dt.timedelta(minutes=minutes)).time(),
    )
    # The one-second candidate quotes are not stored (the writer skips them).
    items = [item for item in feed.run_sync() if isinstance(item, ChainSnapshot | LtpTick)]
    writer = SnapshotWriter()
    for item in items:
        writer.add(item)
    writer.flush(close_bars=True)
    return items


def _assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, LtpTick):
        assert a == b
        return
    for name in ("underlying", "expiry", "exchange_time", "received_at", "underlying_ltp", "seq"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ARRAYS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.django_db(transaction=True)
def test_a_recorded_session_replays_to_identical_snapshots():
    recorded = _record(
        minutes=2,
        scenario={
            "events": [
                {"time": "09:15:30", "type": "bad_ticks", "underlying": "NIFTY", "kind": "crossed", "count": 2},
                {"time": "09:16:00", "type": "bad_ticks", "underlying": "NIFTY", "kind": "missing", "count": 1},
            ]
        },
    )
    replayed = list(load_session(DAY))
    assert len(replayed) == len(recorded)
    for a, b in zip(recorded, replayed, strict=True):
        _assert_same(a, b)


@pytest.mark.django_db(transaction=True)
async def test_the_replay_feed_streams_stored_data_and_drives_the_clock():
    from asgiref.sync import sync_to_async

    recorded = await sync_to_async(_record)(minutes=1, scenario=None)
    clock = SimulatedClock(dt.datetime.combine(DAY, dt.time(0), tzinfo=IST))
    seen = []
    async for item in ReplayFeed(date=DAY, clock=clock, speed="max"):
        assert clock.now() == item.received_at
        seen.append(item)
    assert len(seen) == len(recorded)
    assert sum(isinstance(i, ChainSnapshot) for i in seen) == sum(isinstance(i, ChainSnapshot) for i in recorded)
    await sync_to_async(connections.close_all)()  # the sync thread's connection, before test teardown


@pytest.mark.django_db
def test_writes_build_minute_bars_and_history_for_warm_up():
    items = _record(minutes=3, scenario=None)
    chains = [i for i in items if isinstance(i, ChainSnapshot) and i.underlying == "NIFTY"]
    history = list(load_chain_history("NIFTY", chains[0].received_at, chains[-1].received_at))
    assert len(history) == len(chains) - 1
    sid = str(chains[0].security_id[0])
    bars = MinuteBar.objects.filter(security_id=sid).order_by("minute")
    minutes = {c.exchange_time.replace(second=0) for c in chains if sid in c.security_id}
    assert bars.count() == len(minutes) >= 3  # one bar per minute the contract was quoted
    first_minute = [c for c in chains if c.exchange_time.minute == 15]
    volumes = [int(c.volume[np.flatnonzero(c.security_id == sid)[0]]) for c in first_minute]
    assert bars[0].volume == volumes[-1] - volumes[0]
    assert MinuteBar.objects.filter(symbol="NIFTY").exists()  # index bars from LTP ticks


@pytest.mark.django_db
def test_postgres_stores_raw_rows_in_day_partitions():
    if connection.vendor != "postgresql":
        pytest.skip("partitions exist on PostgreSQL only; SQLite keeps plain tables (tested by retention below)")
    _record(minutes=1, scenario=None)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM marketdata_chainquote_p20261123")
        assert cursor.fetchone()[0] == ChainQuote.objects.count() > 0


def _store_at(when: dt.datetime, sid: str = "1") -> None:
    writer = SnapshotWriter()
    writer.add_tick(LtpTick(sid, "IDX_I", "NIFTY", "INDEX", 24500.0, when, when, 1))
    snapshot = SimulatorFeed(seed=1, trading_day=DAY, end_time=dt.time(9, 15, 3))
    chain = next(i for i in snapshot.run_sync() if isinstance(i, ChainSnapshot))
    chain.exchange_time = chain.received_at = when
    writer.add_chain(chain)
    writer.flush(close_bars=True)


@pytest.mark.django_db
def test_retention_removes_exactly_the_expired_tiers():
    now = dt.datetime(2026, 11, 24, 12, 0, tzinfo=IST)
    kept_raw = dt.datetime(2026, 11, 18, 9, 30, tzinfo=IST)  # 6 days ago: inside the 7-day window
    old_raw = dt.datetime(2026, 11, 17, 15, 0, tzinfo=IST)  # 7 days ago: expired
    _store_at(kept_raw)
    _store_at(old_raw)
    for days, name in ((89, "kept"), (90, "old")):
        minute = dt.datetime.combine(now.date() - dt.timedelta(days=days), dt.time(10), tzinfo=IST)
        MinuteBar.objects.create(
            minute=minute, security_id=name, open_paise=1, high_paise=1, low_paise=1, close_paise=1
        )
    for days, name in ((729, "kept"), (730, "old")):
        DerivedMetric.objects.create(ts=now - dt.timedelta(days=days), name=name, value=1.0)

    counts = retention.prune(now)

    assert set(ChainQuote.objects.values_list("received_at", flat=True)) == {kept_raw}
    assert set(LtpQuote.objects.values_list("received_at", flat=True)) == {kept_raw}
    assert set(MinuteBar.objects.filter(security_id__in=["kept", "old"]).values_list("security_id", flat=True)) == {
        "kept"
    }
    assert not MinuteBar.objects.filter(minute__lt=dt.datetime(2026, 8, 27, tzinfo=IST)).exists()
    assert set(DerivedMetric.objects.values_list("name", flat=True)) == {"kept"}
    if connection.vendor == "postgresql":
        assert counts["chain_partitions_dropped"] == 1 and counts["ltp_partitions_dropped"] == 1
    else:
        assert counts["chain_rows"] > 0 and counts["ltp_rows"] == 1
    assert counts["derived_metrics"] == 1


@pytest.mark.django_db
def test_the_prune_command_and_task_use_the_same_service(capsys):
    from marketdata.tasks import prune_marketdata

    call_command("prune_marketdata", "--dry-run")
    assert "Would remove" in capsys.readouterr().out
    assert "minute_bars" in prune_marketdata.apply().get()  # runs here, with or without a broker


@pytest.mark.django_db
def test_the_retention_schedule_is_registered_for_celery_beat():
    from django_celery_beat.models import PeriodicTask

    task = PeriodicTask.objects.get(task="marketdata.prune_marketdata")
    assert (task.interval.every, task.interval.period) == (6, "hours")


CSV_HEADER = (
    "timestamp,underlying,expiry,security_id,strike,option_type,last_price,bid,ask,bid_qty,ask_qty,volume,"
    "oi,prev_oi,iv,delta,gamma,theta,vega,underlying_ltp\n"
)


@pytest.mark.django_db
def test_chain_csv_imports_as_snapshots(tmp_path):
    path = tmp_path / "chain.csv"
    path.write_text(
        CSV_HEADER
        + "2026-11-23T09:15:00,NIFTY,2026-11-24,132611240245000,24500,CE,120.5,120.4,120.6,650,1300,6500,130000,"
        "120000,12.5,0.52,0.001,-9.5,12.1,24510.2\n"
        + "2026-11-23T09:15:00,NIFTY,2026-11-24,132611240245001,24500,PE,110.5,110.4,110.6,650,1300,5200,99000,"
        "98000,12.9,-0.48,0.001,-9.1,12.0,24510.2\n"
    )
    call_command("import_chain_csv", str(path))
    assert ChainQuote.objects.count() == 2
    snapshot = next(load_chain_history("NIFTY", dt.datetime(2026, 11, 23, tzinfo=IST)))
    assert snapshot.bid.tolist() == [120.4, 110.4] and snapshot.underlying_ltp == 24510.2


@pytest.mark.django_db
def test_a_bad_chain_csv_is_refused_with_row_and_column_and_nothing_stored(tmp_path):
    path = tmp_path / "chain.csv"
    path.write_text(
        CSV_HEADER
        + "2026-11-23T09:15:00,NIFTY,2026-11-24,1,24500,CE,120.5,120.4,120.6,650,1300,6500,130000,120000,12.5,0.5,"
        "0.001,-9.5,12.1,24510.2\n"
        + "2026-11-23T09:15:00,NIFTY,2026-11-24,2,24500,XX,110.5,abc,110.6,650,1300,5200,99000,98000,12.9,-0.5,"
        "0.001,-9.1,12.0,24510.2\n"
    )
    with pytest.raises(ChainCsvError) as excinfo:
        parse(path)
    assert excinfo.value.problems[:2] == [
        (3, "option_type", "expected CE or PE, got 'XX'"),
        (3, "bid", "expected a number, got 'abc'"),
    ]
    with pytest.raises(CommandError, match="row 3, column option_type"):
        call_command("import_chain_csv", str(path))
    assert ChainQuote.objects.count() == 0


def test_bad_command_arguments_get_clear_errors():
    with pytest.raises(CommandError, match="--speed takes a positive number or 'max'"):
        call_command("replay", "--date", "2026-11-23", "--speed", "fast")
    with pytest.raises(CommandError, match="--date takes YYYY-MM-DD"):
        call_command("replay", "--date", "23/11/2026")


@pytest.mark.django_db
def test_a_day_written_twice_keeps_the_first_rows_and_does_not_fail():
    # The simulator replaying a day it already wrote (a second `scripts/run` on one day)
    # or a feed repeating a frame must not stop the engine's writer.
    items = _record(minutes=1, scenario=None)
    chain_rows, ltp_rows = ChainQuote.objects.count(), LtpQuote.objects.count()
    writer = SnapshotWriter()
    for item in items:
        writer.add(item)
    writer.add(items[-1])  # a repeat inside one batch too
    writer.flush(close_bars=True)
    assert (ChainQuote.objects.count(), LtpQuote.objects.count()) == (chain_rows, ltp_rows)
    assert chain_rows and ltp_rows
