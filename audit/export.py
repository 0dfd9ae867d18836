"""Export of audit records for compliance, as CSV or JSON Lines.

Each row carries everything needed to verify it offline: seq, created_at
(UTC, ISO 8601 with microseconds), actor, action, subject, payload (canonical
JSON), prev_hash, hash and mac. ``manage.py verify_audit --file EXPORT``
checks an export with the audit key; without the key, the hashes alone still
prove the records are unedited and in order (sha256(prev_hash ‖ canonical
record), see audit/chain.py).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Iterator

from audit.chain import canonical_json
from audit.verify import FIELDS, records

FORMATS = ("csv", "jsonl")


def _rows(date_from, date_to) -> Iterator[dict]:
    for values in records(date_from, date_to).values_list(*FIELDS).iterator(chunk_size=5000):
        row = dict(zip(FIELDS, values, strict=True))
        row["created_at"] = row["created_at"].astimezone(dt.UTC).isoformat(timespec="microseconds")
        yield row


def stream(fmt: str, date_from: dt.date | None = None, date_to: dt.date | None = None) -> Iterator[str]:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "jsonl":
        for row in _rows(date_from, date_to):
            yield canonical_json(row) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(FIELDS)
    for row in _rows(date_from, date_to):
        writer.writerow([canonical_json(row["payload"]) if name == "payload" else row[name] for name in FIELDS])
        if buffer.tell() > 65536:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def read_export(path) -> Iterator[tuple]:
    """Rows of an export file (either format), as verify_rows wants them."""
    with open(path, newline="", encoding="utf-8") as handle:
        first = handle.readline()
        handle.seek(0)
        if first.startswith("{"):
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    row["created_at"] = dt.datetime.fromisoformat(row["created_at"])
                    yield tuple(row[name] for name in FIELDS)
        else:
            for row in csv.DictReader(handle):
                yield (
                    int(row["seq"]),
                    dt.datetime.fromisoformat(row["created_at"]),
                    row["actor"],
                    row["action"],
                    row["subject"],
                    json.loads(row["payload"]),
                    row["prev_hash"],
                    row["hash"],
                    row["mac"],
                )
