"""The simulator's items made ahead in another process: the same items, the same
clock, a state a restart can resume from, and no silent end when that process fails."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from marketdata.feeds import prefetch
from marketdata.feeds.simulator import SimulatorFeed
from quanthub.clock import IST, SimulatedClock

DAY = dt.date(2026, 11, 23)
# Every kind of scripted event: a flow (price jump, OI build), a VIX spike, a gap, bad ticks.
SCENARIO = {
    "events": [
        {"time": "09:15:40", "type": "vix_spike", "points": 4, "decay_minutes": 2},
        {"time": "09:16:00", "type": "informed_flow", "underlying": "NIFTY", "follow_through_pct": 40},
        {"time": "09:17:10", "type": "feed_gap", "seconds": 12},
        {"time": "09:18:00", "type": "bad_ticks", "underlying": "BANKNIFTY", "kind": "crossed", "count": 3},
    ]
}
ROOT = Path(__file__).resolve().parents[2]


def _feed(minutes=5, clock=None, **kw):
    end = (dt.datetime(2026, 1, 1, 9, 15) + dt.timedelta(minutes=minutes)).time()
    return SimulatorFeed(clock=clock, seed=5, scenario=SCENARIO, trading_day=DAY, end_time=end, **kw)


def _value(item) -> tuple:
    """An item's every field, arrays bit for bit (dtype and bytes)."""
    out = [type(item).__name__]
    for f in dataclasses.fields(item):
        v = getattr(item, f.name)
        if isinstance(v, np.ndarray):
            out.append((f.name, v.dtype.str, v.shape, v.tobytes()))
        else:  # a float by its bits (NaN included: a missing bid is NaN)
            out.append((f.name, v.hex() if isinstance(v, float) else v))
    return tuple(out)


async def _stream(feed, limit=None):
    values, clocks = [], []
    async for item in feed:
        values.append(_value(item))
        clocks.append(feed.clock.now() if feed.clock else None)
        if limit is not None and len(values) >= limit:
            break
    return values, clocks


async def test_the_items_made_ahead_are_the_items_made_here_bit_for_bit():
    here = _feed(clock=SimulatedClock(dt.datetime(2026, 11, 23, 9, 14, 59, tzinfo=IST)), prefetch=False)
    ahead = _feed(clock=SimulatedClock(dt.datetime(2026, 11, 23, 9, 14, 59, tzinfo=IST)), prefetch=True)
    expected, expected_clock = await _stream(here)
    got, got_clock = await _stream(ahead)
    assert len(expected) > 1000 and got == expected
    assert got_clock == expected_clock  # each item sets the engine's clock as it is handed over
    assert [dataclasses.astuple(e) for e in ahead.injected] == [dataclasses.astuple(e) for e in here.injected]
    assert {e.type.split(":")[0] for e in ahead.injected} >= {"vix_spike", "informed_flow", "feed_gap", "bad_ticks"}
    assert ahead.get_state() == here.get_state()  # the session's end, as the feed made it here
    assert not ahead._prefetch.process.is_alive()


@pytest.mark.parametrize("ahead", [True, False], ids=["made-ahead", "made-here"])
async def test_a_restart_from_the_state_handed_over_carries_on_with_the_same_market(ahead):
    """Every field of every item after the restart, an informed flow under way across it:
    the flow keeps its time line and the quotes' sizes their random stream."""
    whole, _ = await _stream(_feed(prefetch=False))
    first = _feed(clock=SimulatedClock(dt.datetime(2026, 11, 23, 9, 14, 59, tzinfo=IST)), prefetch=ahead)
    seen, _ = await _stream(first, limit=len(whole) // 2 + 3)
    state = first.get_state()
    stopped_at = first.clock.now()
    await first.close()
    if ahead:
        # Stopped mid-batch: the state is that of the last batch handed over whole, older than the stop.
        assert not first._prefetch.process.is_alive()
        assert dt.datetime.fromisoformat(state["at"]) < stopped_at
    # As run_engine resumes: from the second after the last one the engine saw.
    resume_at = stopped_at.replace(microsecond=0) + dt.timedelta(seconds=1)
    resumed = _feed(prefetch=ahead)
    resumed.resume(resume_at, state)
    rest, _ = await _stream(resumed)
    tail = [v for v in whole if next(f[1] for f in v[1:] if f[0] == "received_at") >= resume_at]
    strip = {"seq"}  # a resumed stream numbers its items on from the state's count

    def same(values):
        return [tuple(f for f in v if not (isinstance(f, tuple) and f[0] in strip)) for v in values]

    assert len(rest) == len(tail) > 100 and same(rest) == same(tail)
    assert seen == whole[: len(seen)]


class _Failing(SimulatorFeed):
    def _seconds(self, start, end):
        for n, entry in enumerate(super()._seconds(start, end)):
            if n == 25:
                raise ZeroDivisionError("the market's arithmetic broke")
            yield entry


async def test_a_failure_in_the_generating_process_is_raised_with_its_traceback():
    feed = _Failing(seed=5, scenario=None, trading_day=DAY, end_time=dt.time(9, 20), prefetch=True)
    count = 0
    with pytest.raises(prefetch.PrefetchError, match="ZeroDivisionError: the market's arithmetic broke"):
        async for _ in feed:
            count += 1
    assert count > 0  # the whole batches before it were handed over
    assert not feed._prefetch.process.is_alive()


async def test_a_generating_process_killed_mid_session_ends_the_stream_with_an_error_not_quietly():
    feed = _feed(minutes=30, prefetch=True)
    count = 0
    with pytest.raises(prefetch.PrefetchError, match="ended without finishing the session"):
        async for _ in feed:
            count += 1
            if count == 50:
                os.kill(feed._prefetch.process.pid, signal.SIGKILL)
    assert count >= 50


def test_the_generating_process_exits_when_the_engine_process_is_killed():
    script = textwrap.dedent(
        """
        import asyncio, datetime as dt, sys, time
        from marketdata.feeds.simulator import SimulatorFeed

        async def main():
            feed = SimulatorFeed(seed=5, trading_day=dt.date(2026, 11, 23), prefetch=True)
            async for _ in feed:
                print(feed._prefetch.process.pid, flush=True)
                time.sleep(600)  # the engine, stuck until it is killed

        asyncio.run(main())
        """
    )
    engine = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        child = int(engine.stdout.readline())
        os.kill(engine.pid, signal.SIGKILL)
        engine.wait(timeout=10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.1)
        assert not _alive(child), "the generating process outlived the engine"
    finally:
        engine.kill()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_when_items_are_made_ahead(monkeypatch):
    monkeypatch.delenv(prefetch.ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert prefetch.wanted(None, speed="max", session_s=22500)
    assert not prefetch.wanted(None, speed="max", session_s=600)  # over before a process starts
    assert not prefetch.wanted(None, speed=1, session_s=22500)  # real time has time to spare
    assert not prefetch.wanted(True, speed=10, session_s=22500)
    assert prefetch.wanted(True, speed="max", session_s=60) and not prefetch.wanted(False, speed="max", session_s=1e6)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert not prefetch.wanted(None, speed="max", session_s=22500)  # no core to spare
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv(prefetch.ENV, off)
        assert not prefetch.wanted(None, speed="max", session_s=22500)
    monkeypatch.setenv(prefetch.ENV, "1")
    assert prefetch.wanted(None, speed="max", session_s=22500)


def test_a_script_that_runs_a_session_at_its_top_level_is_not_run_again_by_the_generator(tmp_path):
    """A spawned process would run an unguarded main script again (and start its own
    session inside the generator); it is not told of it."""
    script = tmp_path / "session.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, datetime as dt, sys
            sys.path.insert(0, {str(ROOT)!r})
            from marketdata.feeds.simulator import SimulatorFeed

            async def count():
                feed = SimulatorFeed(seed=5, trading_day=dt.date(2026, 11, 23), end_time=dt.time(9, 20), prefetch=True)
                n = 0
                async for _ in feed:
                    n += 1
                return n, feed._prefetch is not None

            print(*asyncio.run(count()))
            """
        )
    )
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    n, ahead = run.stdout.split()
    assert int(n) > 1000 and ahead == "True"
