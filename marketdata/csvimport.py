"""Import option chains from CSV, one row per contract per snapshot.

Columns (header required, order free): ``timestamp`` (ISO 8601; without an
offset it is IST), ``underlying``, ``expiry`` (YYYY-MM-DD), ``security_id``,
``strike``, ``option_type`` (CE/PE), ``last_price``, ``bid``, ``ask``,
``bid_qty``, ``ask_qty``, ``volume``, ``oi``, ``prev_oi``, ``iv``, ``delta``,
``gamma``, ``theta``, ``vega``, ``underlying_ltp``. Rows sharing a timestamp
and underlying form one snapshot. Everything is checked before anything is
written; a bad file is refused with row and column, and nothing is stored.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections import defaultdict
from pathlib import Path

import numpy as np

from marketdata.feeds.base import ChainSnapshot
from marketdata.storage import SnapshotWriter
from quanthub.clock import IST

COLUMNS = (
    "timestamp",
    "underlying",
    "expiry",
    "security_id",
    "strike",
    "option_type",
    "last_price",
    "bid",
    "ask",
    "bid_qty",
    "ask_qty",
    "volume",
    "oi",
    "prev_oi",
    "iv",
    "delta",
    "gamma",
    "theta",
    "vega",
    "underlying_ltp",
)
FLOATS = ("strike", "last_price", "bid", "ask", "iv", "delta", "gamma", "theta", "vega", "underlying_ltp")
INTS = ("bid_qty", "ask_qty", "volume", "oi", "prev_oi")


class ChainCsvError(ValueError):
    def __init__(self, problems: list[tuple[int, str, str]]):
        self.problems = problems
        shown = "; ".join(f"row {r}, column {c}: {m}" for r, c, m in problems[:10])
        super().__init__(f"Option-chain CSV refused, nothing imported: {shown}")


def parse(path: Path) -> list[ChainSnapshot]:
    problems: list[tuple[int, str, str]] = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise ChainCsvError([(0, "-", f"cannot read {path}: {exc.strerror}")]) from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ChainCsvError([(1, c, "missing from the header") for c in missing])
        for number, row in enumerate(reader, start=2):
            parsed = _row(number, row, problems)
            if parsed is not None:
                groups[(parsed["timestamp"], parsed["underlying"])].append(parsed)
    if problems:
        raise ChainCsvError(problems)
    snapshots = []
    for seq, ((ts, underlying), rows) in enumerate(sorted(groups.items(), key=lambda kv: kv[0]), start=1):
        rows.sort(key=lambda r: (r["strike"], r["option_type"]))
        col = {name: [r[name] for r in rows] for name in COLUMNS}
        snapshots.append(
            ChainSnapshot(
                underlying=underlying,
                expiry=rows[0]["expiry"],
                exchange_time=ts,
                received_at=ts,
                underlying_ltp=rows[0]["underlying_ltp"],
                security_id=np.array(col["security_id"], dtype="U20"),
                strike=np.array(col["strike"]),
                option_type=np.array(col["option_type"], dtype=np.int8),
                **{
                    name: np.array(col[name], dtype=np.float64)
                    for name in FLOATS
                    if name not in ("strike", "underlying_ltp")
                },
                **{name: np.array(col[name], dtype=np.int64) for name in INTS},
                seq=seq,
            )
        )
    return snapshots


def _row(number: int, row: dict, problems: list) -> dict | None:
    before = len(problems)
    out: dict = {}
    raw_ts = (row.get("timestamp") or "").strip()
    try:
        ts = dt.datetime.fromisoformat(raw_ts)
        out["timestamp"] = (ts if ts.tzinfo else ts.replace(tzinfo=IST)).astimezone(IST)
    except ValueError:
        problems.append((number, "timestamp", f"expected ISO 8601, got {raw_ts!r}"))
    try:
        out["expiry"] = dt.date.fromisoformat((row.get("expiry") or "").strip())
    except ValueError:
        problems.append((number, "expiry", f"expected YYYY-MM-DD, got {row.get('expiry')!r}"))
    out["underlying"] = (row.get("underlying") or "").strip().upper()
    if not out["underlying"]:
        problems.append((number, "underlying", "is empty"))
    out["security_id"] = (row.get("security_id") or "").strip()
    if not out["security_id"].isdigit():
        problems.append((number, "security_id", f"expected a numeric id, got {out['security_id']!r}"))
    option_type = (row.get("option_type") or "").strip().upper()
    if option_type not in ("CE", "PE"):
        problems.append((number, "option_type", f"expected CE or PE, got {option_type!r}"))
    out["option_type"] = 0 if option_type == "CE" else 1
    for name in FLOATS:
        try:
            value = float(row.get(name) or "")
            if not np.isfinite(value):
                raise ValueError
            out[name] = value
        except ValueError:
            problems.append((number, name, f"expected a number, got {row.get(name)!r}"))
    for name in INTS:
        raw = (row.get(name) or "").strip()
        if not raw.isdigit():
            problems.append((number, name, f"expected a whole non-negative number, got {raw!r}"))
        else:
            out[name] = int(raw)
    return out if len(problems) == before else None


def import_csv(path: Path) -> tuple[int, int]:
    snapshots = parse(path)
    writer = SnapshotWriter()
    for snapshot in snapshots:
        writer.add_chain(snapshot)
    rows = writer.flush(close_bars=True)
    return len(snapshots), rows
