"""The nightly Isolation Forest: detection quality, training time, scoring cost.

One simulated session (seed 101, the default scenario: informed flow every 10 to
15 minutes on each underlying) is stored in a temporary SQLite database through
the real writers, and ``marketdata.anomaly.training.train_underlying`` trains
each underlying's model from storage: ``train_s`` is the slower underlying's
wall time, reading the session back included. Held-out sessions (seeds 202 and
303, the next trading day) are then scored contract by contract: ``auc`` is the
ROC AUC of the informed-flow bursts (the injected contract at the snapshot the
flow starts) against every other usable contract snapshot, over both
underlyings and both sessions; ``top_percentile_share`` is the share of bursts
scoring above the 99th percentile. ``score_us_per_snapshot`` is the median
process time to score a 400-contract snapshot, and
``score_page_faults_per_snapshot`` the minor page faults each of those calls
took (memory the allocator had handed back and the kernel had to map again).

    python benchmarks/anomaly.py [--json PATH] [--minutes N]
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, parser, report  # noqa: E402

TRAIN_DAY = dt.date(2026, 11, 23)
TEST_DAY = dt.date(2026, 11, 24)


def _session(seed: int, day: dt.date, minutes: int):
    from marketdata.feeds.simulator import SimulatorFeed

    end = (dt.datetime(2026, 1, 1, 9, 15) + dt.timedelta(minutes=minutes)).time()
    return SimulatorFeed(seed=seed, scenario="default", trading_day=day, end_time=end)


def child(minutes: int) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    import django

    django.setup()
    import numpy as np
    from django.core.management import call_command
    from sklearn.metrics import roc_auc_score

    from marketdata.anomaly import training
    from marketdata.anomaly.features import FeatureTracker
    from marketdata.demo import ensure_demo_instruments
    from marketdata.feeds.base import ChainSnapshot
    from marketdata.storage import SnapshotWriter
    from marketdata.validation import ChainValidator

    call_command("migrate", verbosity=0)
    ensure_demo_instruments()
    feed = _session(101, TRAIN_DAY, minutes)
    validator, writer = ChainValidator(), SnapshotWriter()
    for item in feed.run_sync():
        if isinstance(item, ChainSnapshot):
            validator.validate(item, item.received_at)
        writer.add(item)
        if writer.pending >= 50_000:
            writer.flush()
    writer.flush(close_bars=True)

    models, train_s = {}, {}
    for underlying in ("NIFTY", "BANKNIFTY"):
        started = time.perf_counter()
        row = training.train_underlying(underlying, TRAIN_DAY, sessions=1)
        train_s[underlying] = time.perf_counter() - started
        models[underlying] = training.load(row)
        samples = row.samples

    labels, scores = [], []
    matrices = []
    for seed in (202, 303):
        feed = _session(seed, TEST_DAY, minutes)
        validator, trackers, snapshots = ChainValidator(), {}, []
        for item in feed.run_sync():
            if isinstance(item, ChainSnapshot):
                validator.validate(item, item.received_at)
                features = trackers.setdefault(item.underlying, FeatureTracker()).update(item)
                snapshots.append((item, features))
        bursts = {(e.at, e.security_id) for e in feed.injected if e.type == "informed_flow"}
        for snapshot, features in snapshots:
            usable = features.usable
            if not usable.any():
                continue
            score = models[snapshot.underlying].score(features.matrix)
            hit = np.array([(snapshot.exchange_time, sid) in bursts for sid in snapshot.security_id.tolist()])
            labels.append(hit[usable])
            scores.append(score[usable])
            matrices.append(features.matrix)
    y, s = np.concatenate(labels), np.concatenate(scores)

    # A 400-contract snapshot: ten consecutive 42-contract chains' rows.
    rows = np.concatenate(matrices[2000:2010])[:400] if len(matrices) > 2010 else np.concatenate(matrices)[:400]
    rows = np.resize(rows, (400, rows.shape[1]))
    scorer = models["NIFTY"]
    timings = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(300):
        started = time.process_time()
        scorer.score(rows)
        timings.append(time.process_time() - started)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(
        json.dumps(
            {
                "auc": round(float(roc_auc_score(y, s)), 4),
                "top_percentile_share": round(float((s[y] >= 0.99).mean()), 4),
                "bursts": int(y.sum()),
                "snapshots_scored": int(len(y)),
                "train_s": round(max(train_s.values()), 3),
                "train_samples": int(samples),
                "score_us_per_snapshot": round(float(np.median(timings)) * 1e6, 1),
                "score_us_per_snapshot_p90": round(float(np.quantile(timings, 0.9)) * 1e6, 1),
                "score_page_faults_per_snapshot": round(faults / len(timings), 2),
                "minutes": minutes,
            }
        )
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, default=375, help="Minutes of each session from 09:15 (375: the full day)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{tmp}/anomaly_bench.sqlite3",
            "QUANTHUB_VAR_DIR": tmp,
            "LOG_LEVEL": "error",
        }
        env.pop("REDIS_URL", None)
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(args.minutes)], env=env, capture_output=True, text=True, cwd=ROOT
        )
    if out.returncode:
        raise SystemExit(f"anomaly benchmark failed:\n{out.stderr[-3000:]}")
    report("anomaly", json.loads(out.stdout.strip().splitlines()[-1]), args.json)


if __name__ == "__main__":
    main()
