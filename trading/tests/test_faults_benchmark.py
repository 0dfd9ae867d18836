"""The fault benchmark, short: the real run_engine on a private PostgreSQL and
Redis, killed (a plain restart and a takeover), a 20 s PostgreSQL outage and a
Redis outage, then its books against the paper broker's."""

from __future__ import annotations

import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(
    not glob.glob("/usr/lib/postgresql/*/bin/initdb") or not shutil.which("redis-server"),
    reason="needs PostgreSQL server binaries and redis-server",
)
def test_kills_and_outages_lose_no_fill_and_never_end_the_engine(tmp_path):
    out = tmp_path / "faults.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "faults.py"),
            "--kills",
            "2",
            "--json",
            str(out),
            "--pg-port",
            "55499",
            "--redis-port",
            "56499",
            "--redis-outage-s",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=880,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["kills"] == 2
    for name in (
        "duplicates",
        "orphans",
        "lost_fills",
        "position_mismatches",
        "unrepaired_breaks",
        "engine_exits_on_db_outage",
        "orders_sent_twice_on_throttle",
        "engine_exits_on_redis_outage",
        "stuck_in_flight",
        "trades_exit_before_entry",
        "pnl_contradicted",
    ):
        assert metrics[name] == 0, (name, metrics)
    # How much trades in two kills depends on the machine's speed; the books must agree however much.
    assert metrics["orders"] >= metrics["broker_orders"]
