"""Verifying the audit chain, from the database or from an export file.

The core, ``verify_rows``, is pure: it walks rows in sequence order and
reports the first broken link — a missing or out-of-order sequence number, a
``prev_hash`` that does not point at the previous record, a hash that does
not match the record's content (an edit), or a MAC that does not match the
key (a forged record). It streams, so a day of records is checked without
holding it in memory.

``verify`` walks the database. With several workers it splits the chain into
sequence ranges, verifies each in a forked process (hashing is CPU-bound and
the GIL holds it to one core), and links the seams afterwards: each range's
first ``prev_hash`` must be the previous range's last hash. Verifying the
whole chain (no ``--to``) then checks the tail, which the links alone cannot:
the chain head must name the last record and carry a valid MAC, and the
latest signed checkpoint outside the database (``audit.checkpoints``) must
still be in the chain. A superuser who deletes the newest records and moves
the head back fails both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import multiprocessing
from collections.abc import Iterable
from dataclasses import dataclass, replace
from json.encoder import encode_basestring  # what json.dumps(str, ensure_ascii=False) calls

from django.conf import settings
from django.db import connection, connections
from django.db.models import TextField
from django.db.models.functions import Cast

from audit import checkpoints
from audit.chain import GENESIS, compute_hash, compute_head_mac, mac_template, record_body
from audit.models import AuditChainHead, AuditRecord

FIELDS = ("seq", "created_at", "actor", "action", "subject", "payload", "prev_hash", "hash", "mac")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    verified: int
    broken_seq: int | None = None
    problem: str = ""
    first_seq: int | None = None
    last_seq: int | None = None
    last_hash: str | None = None
    checkpoint_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


def verify_rows(rows: Iterable[tuple], *, key: str, prev_hash: str = GENESIS, prev_seq: int = 0) -> VerifyResult:
    """Rows as ``FIELDS``. ``created_at`` is a datetime or SQLite's UTC text and
    ``payload`` a dict or its stored JSON text (Django's SQLite text for a UTC
    datetime is "YYYY-MM-DD HH:MM:SS[.ffffff]"); text takes a fast path that hashes
    the stored canonical text as it is, and falls back to parsing when that does
    not match (text stored in another but equal form), so both agree on what is
    intact."""
    keyed = mac_template(key).copy  # keyed once; each record's MAC is a copy fed its hash
    sha256, compare, quote = hashlib.sha256, hmac.compare_digest, encode_basestring
    count = 0
    first = None
    for seq, created_at, actor, action, subject, payload, row_prev, row_hash, mac in rows:
        if first is None:
            first = seq
        if seq != prev_seq + 1:
            problem = "missing record(s) before it" if seq > prev_seq + 1 else "out of order or duplicated"
            return VerifyResult(count, seq, f"sequence {seq} follows {prev_seq}: {problem}", first, prev_seq, prev_hash)
        if row_prev != prev_hash:
            return VerifyResult(
                count, seq, "prev_hash does not point at the previous record", first, prev_seq, prev_hash
            )
        expected = None
        if type(created_at) is str and type(payload) is str:
            # record_body_text, inlined: this line runs for every record.
            stamp = f"{created_at[:10]}T{created_at[11:]}{'.000000' if len(created_at) == 19 else ''}+00:00"
            body = (
                f'{{"action":{quote(action)},"actor":{quote(actor)},"created_at":"{stamp}",'
                f'"payload":{payload},"seq":{seq},"subject":{quote(subject)}}}'
            )
            expected = sha256((prev_hash + body).encode("utf-8")).hexdigest()
        if expected != row_hash:
            when = dt.datetime.fromisoformat(created_at) if type(created_at) is str else created_at
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            content = json.loads(payload) if type(payload) is str else payload
            expected = compute_hash(prev_hash, record_body(seq, when, actor, action, subject, content))
            if expected != row_hash:
                return VerifyResult(count, seq, "content does not match its hash (edited)", first, prev_seq, prev_hash)
        record_mac = keyed()
        record_mac.update(row_hash.encode("ascii"))
        if not compare(record_mac.hexdigest(), mac):
            return VerifyResult(count, seq, "MAC does not match the audit key (forged)", first, prev_seq, prev_hash)
        prev_hash, prev_seq = row_hash, seq
        count += 1
    return VerifyResult(count, None, "", first, prev_seq if count else None, prev_hash if count else None)


def _raw_rows(queryset, chunk: int = 10_000):
    """Rows straight from the driver's cursor: the ORM's per-row conversions cost
    more than the hashing. SQLite's text (timestamps, JSON) is passed through for
    ``verify_rows``' fast path; PostgreSQL's values arrive typed."""
    columns: list = list(FIELDS)
    if connection.vendor == "sqlite":
        # An expression has no declared type, so the driver's datetime converter
        # leaves the stored text alone.
        columns[1] = Cast("created_at", TextField())
    sql, params = queryset.values_list(*columns).query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while True:
            batch = cursor.fetchmany(chunk)
            if not batch:
                return
            yield from batch


def _bounds(date_from: dt.date | None, date_to: dt.date | None):
    from quanthub.clock import IST

    start = dt.datetime.combine(date_from, dt.time(0), tzinfo=IST) if date_from else None
    end = dt.datetime.combine(date_to, dt.time(0), tzinfo=IST) + dt.timedelta(days=1) if date_to else None
    return start, end


def records(date_from: dt.date | None = None, date_to: dt.date | None = None):
    start, end = _bounds(date_from, date_to)
    queryset = AuditRecord.objects.order_by("seq")
    if start:
        queryset = queryset.filter(created_at__gte=start)
    if end:
        queryset = queryset.filter(created_at__lt=end)
    return queryset


def _verify_range(date_from, date_to, low: int, high: int, key: str) -> tuple[str | None, VerifyResult]:
    """One worker's share: the records with ``low <= seq <= high``, linked inside
    the range; the range's first ``prev_hash`` is returned for the seam check."""
    try:
        queryset = records(date_from, date_to).filter(seq__gte=low, seq__lte=high)
        rows = _raw_rows(queryset)
        head = next(rows, None)
        if head is None:
            return None, VerifyResult(0)
        result = verify_rows(_chain((head,), rows), key=key, prev_hash=head[6], prev_seq=head[0] - 1)
        return head[6], result
    finally:
        connection.close()


def _chain(first, rest):
    yield from first
    yield from rest


def _link(parts: list[tuple[str | None, VerifyResult]], prev_hash: str, prev_seq: int) -> VerifyResult:
    """Join the ranges' results in order: a seam is sound when a range starts at
    the sequence after the previous one ended and its first record points at it."""
    verified, first = 0, None
    for first_prev, part in parts:
        if part.first_seq is None and part.ok:
            continue  # an empty range: the next range's seam shows any gap
        if first is None:
            first = part.first_seq
        if part.first_seq != prev_seq + 1:
            kind = (
                "missing record(s) before it" if (part.first_seq or 0) > prev_seq + 1 else "out of order or duplicated"
            )
            return VerifyResult(
                verified,
                part.first_seq,
                f"sequence {part.first_seq} follows {prev_seq}: {kind}",
                first,
                prev_seq,
                prev_hash,
            )
        if first_prev != prev_hash:
            return VerifyResult(
                verified, part.first_seq, "prev_hash does not point at the previous record", first, prev_seq, prev_hash
            )
        if not part.ok:
            return replace(part, verified=verified + part.verified, first_seq=first)
        verified += part.verified
        prev_seq, prev_hash = part.last_seq, part.last_hash
    return VerifyResult(verified, None, "", first, prev_seq if verified else None, prev_hash if verified else None)


def _in_parallel(date_from, date_to, low: int, high: int, key: str, workers: int) -> list:
    step = (high - low) // workers + 1
    ranges = [(date_from, date_to, start, min(start + step - 1, high), key) for start in range(low, high + 1, step)]
    # The children open their own connections: close ours so none is shared
    # across the fork (a forked PostgreSQL socket closed twice ends the session).
    connections.close_all()
    with multiprocessing.get_context("fork").Pool(len(ranges)) as pool:
        return pool.starmap(_verify_range, ranges)


def _can_fork() -> bool:
    # A transaction's uncommitted rows and an in-memory SQLite database are
    # invisible to other processes; the tests' databases are both.
    if connection.in_atomic_block:
        return False
    name = str(connection.settings_dict.get("NAME") or "")
    return not (connection.vendor == "sqlite" and ("memory" in name or name == ""))


def verify(
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    *,
    key: str | None = None,
    workers: int = 1,
) -> VerifyResult:
    """Verify the chain (or a date range of it, linked to the record before it).
    Without ``date_to`` the tail is checked against the chain head and the latest
    checkpoint; a missing checkpoint directory raises ``CheckpointError``."""
    key = settings.AUDIT_HMAC_KEY if key is None else key
    queryset = records(date_from, date_to)
    first = queryset.values_list("seq", flat=True).first()
    prev_hash, prev_seq = GENESIS, 0
    if first is not None and first > 1:
        before = AuditRecord.objects.filter(seq=first - 1).values_list("hash", flat=True).first()
        if before is None:
            return VerifyResult(0, first, f"the record before {first} is missing", first, None)
        prev_hash, prev_seq = before, first - 1
    last = queryset.reverse().values_list("seq", flat=True).first() if first is not None else None
    if first is not None and workers > 1 and last - first + 1 >= settings.AUDIT_VERIFY_PARALLEL_MIN and _can_fork():
        result = _link(_in_parallel(date_from, date_to, first, last, key, workers), prev_hash, prev_seq)
    else:
        result = verify_rows(_raw_rows(queryset), key=key, prev_hash=prev_hash, prev_seq=prev_seq)
    if result.ok and date_to is None:
        result = _check_tail(result, key, prev_seq, prev_hash)
    return result


def _check_tail(result: VerifyResult, key: str, prev_seq: int, prev_hash: str) -> VerifyResult:
    last = result.last_seq or prev_seq
    last_hash = result.last_hash or prev_hash
    head = AuditChainHead.objects.filter(id=1).values_list("seq", "hash", "mac").first()
    if head is not None and head[0] != last:
        return replace(
            result,
            broken_seq=min(head[0], last) + 1,
            problem=f"the chain head says the chain ends at {head[0]}, the records end at {last}",
        )
    if head is not None and head[0] > 0:
        if head[1] != last_hash:
            return replace(result, broken_seq=last, problem="the chain head's hash is not the last record's")
        if not hmac.compare_digest(compute_head_mac(head[0], head[1], key), head[2]):
            return replace(
                result,
                broken_seq=last,
                problem="the chain head's MAC does not match the audit key (the head was moved or forged)",
            )
    checkpoint = checkpoints.latest(key)  # raises CheckpointError for a missing directory or a forged line
    if checkpoint is None:
        if last >= settings.AUDIT_CHECKPOINT_EVERY:
            return replace(
                result,
                broken_seq=last,
                problem=f"no checkpoint on file though the chain passed #{settings.AUDIT_CHECKPOINT_EVERY} "
                "(the checkpoint file was removed)",
            )
        return result
    if checkpoint.seq > last:
        return replace(
            result,
            broken_seq=last + 1,
            problem=f"the checkpoint of {checkpoint.at} vouches for record #{checkpoint.seq}, "
            f"the chain ends at #{last}: the newest records were removed",
            checkpoint_seq=checkpoint.seq,
        )
    recorded = AuditRecord.objects.filter(seq=checkpoint.seq).values_list("hash", flat=True).first()
    if recorded != checkpoint.hash:
        return replace(
            result,
            broken_seq=checkpoint.seq,
            problem=f"record #{checkpoint.seq} is not the one the checkpoint of {checkpoint.at} vouches for",
            checkpoint_seq=checkpoint.seq,
        )
    return replace(result, checkpoint_seq=checkpoint.seq)
