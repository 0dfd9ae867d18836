"""Audit chain: append latency (one record, inside its own transaction, the
way a decision is recorded; wall time, and the process time it used: on a
shared machine the wall time's tail is mostly the process waiting for a
core), verification throughput (the chain split across every core, seams
linked after) and whether a superuser's truncation of the tail is caught
(``truncation_detected``: the newest records deleted and the head moved back,
then ``verify_audit`` run). SQLite (a temporary file) and, when DATABASE_URL
points at PostgreSQL (or --postgres URL), PostgreSQL.

    python benchmarks/audit.py [--json PATH] [--postgres URL] [--records N] [--chain N]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, parser, report  # noqa: E402


def run_one(url: str, records: int, chain_length: int, tmp: str) -> dict:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "LOG_LEVEL": "error",
        "QUANTHUB_VAR_DIR": tmp,
        "AUDIT_CHECKPOINT_DIR": f"{tmp}/checkpoints-{'pg' if url.startswith('postgres') else 'sqlite'}",
        "AUDIT_CHECKPOINT_TO_SINKS": "false",
    }
    env.pop("REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(records), str(chain_length)],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode:
        raise SystemExit(f"audit benchmark on {url.split('@')[-1]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(records: int, chain_length: int) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
    import time

    import django
    import numpy as np

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction

    call_command("migrate", verbosity=0)
    if connection.vendor == "postgresql":
        # A run stopped halfway leaves its chain (under its own key) behind: start empty.
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE audit_auditrecord, audit_auditchainhead")
    from audit.chain import append
    from audit.checkpoints import write_head
    from audit.models import AuditChainHead
    from audit.verify import verify

    payload = {
        "instrument": "132611240245000",
        "side": "BUY",
        "quantity": 130,
        "limit_price": "120.45",
        "purpose": "ENTRY",
        "strategy": "vol_oi",
        "signal": "vol_oi:132611240245000:0930",
    }
    inside, with_commit, cpu = [], [], []
    for i in range(records):
        began = time.perf_counter()
        with transaction.atomic():
            # A decision's transaction: the append is what it adds to it…
            start, start_cpu = time.perf_counter(), time.process_time()
            append("order.intent", actor="engine:benchmark", subject=f"order:{i}", payload=payload)
            inside.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        with_commit.append(time.perf_counter() - began)  # …and this includes the commit it shares.
    # Verification is measured on a longer chain, filled in large transactions.
    filled = records
    while filled < chain_length:
        with transaction.atomic():
            for i in range(filled, min(filled + 10_000, chain_length)):
                append("order.intent", actor="engine:benchmark", subject=f"order:{i}", payload=payload)
        filled = min(filled + 10_000, chain_length)
    ms = np.array(inside[100:]) * 1000
    cpu_ms = np.array(cpu[100:]) * 1000
    commit_ms = np.array(with_commit[100:]) * 1000
    write_head(reason="close")
    workers = os.cpu_count() or 1
    verify(workers=workers)  # warm the page cache; the second run is measured
    began = time.perf_counter()
    result = verify(workers=workers)
    elapsed = time.perf_counter() - began
    assert result.ok and result.verified == max(records, chain_length), result
    # A superuser's truncation: delete the newest 50 records and move the head
    # back to the record now last, hash and all (the head's MAC cannot be redone).
    head = AuditChainHead.objects.get(id=1)
    keep = head.seq - 50
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditrecord DISABLE TRIGGER audit_append_only")
        cursor.execute("DELETE FROM audit_auditrecord WHERE seq > %s", [keep])
        cursor.execute(
            "UPDATE audit_auditchainhead SET seq = %s, hash = (SELECT hash FROM audit_auditrecord WHERE seq = %s)",
            [keep, keep],
        )
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE audit_auditrecord ENABLE TRIGGER audit_append_only")
    truncated = verify(workers=workers)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE audit_auditrecord, audit_auditchainhead")
    print(
        json.dumps(
            {
                "append_p50": float(np.percentile(ms, 50)),
                "append_p99": float(np.percentile(ms, 99)),
                "commit_p99": float(np.percentile(commit_ms, 99)),
                "cpu_p50": float(np.percentile(cpu_ms, 50)),
                "cpu_p99": float(np.percentile(cpu_ms, 99)),
                "verify_per_s": result.verified / elapsed,
                "truncation_detected": 0 if truncated.ok else 1,
            }
        )
    )


def main() -> None:
    args_parser = parser(__doc__.splitlines()[0])
    args_parser.add_argument("--postgres", help="PostgreSQL URL (default: DATABASE_URL if it is one).")
    args_parser.add_argument("--records", type=int, default=20_000, help="appends timed one by one")
    args_parser.add_argument("--chain", type=int, default=200_000, help="chain length verified")
    args = args_parser.parse_args()
    metrics: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        result = run_one(f"sqlite:///{tmp}/audit.sqlite3", args.records, args.chain, tmp)
        metrics.update(
            append_p50_ms=result["append_p50"],
            append_p99_ms=result["append_p99"],
            append_with_commit_p99_ms=result["commit_p99"],
            append_cpu_p50_ms=result["cpu_p50"],
            append_cpu_p99_ms=result["cpu_p99"],
            verify_records_per_s=result["verify_per_s"],
            truncation_detected=result["truncation_detected"],
        )
        url = os.environ.get("DATABASE_URL", "")
        pg = args.postgres or (url if url.startswith("postgres") else "")
        if pg:
            result = run_one(pg, args.records, args.chain, tmp)
            metrics.update(
                postgres_append_p50_ms=result["append_p50"],
                postgres_append_p99_ms=result["append_p99"],
                postgres_append_with_commit_p99_ms=result["commit_p99"],
                postgres_append_cpu_p99_ms=result["cpu_p99"],
                postgres_verify_records_per_s=result["verify_per_s"],
                postgres_truncation_detected=result["truncation_detected"],
            )
    # Wall-clock figures on a shared machine: say how busy it was.
    metrics.update(cores=os.cpu_count() or 1, load_avg_1m=os.getloadavg()[0])
    report("audit", metrics, args.json)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), int(sys.argv[3]))
    else:
        main()
