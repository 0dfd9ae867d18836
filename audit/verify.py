"""Verifying the audit chain, from the database or from an export file.

The core, ``verify_rows``, is pure: it walks rows in sequence order and
reports the first broken link — a missing or out-of-order sequence number, a
``prev_hash`` that does not point at the previous record, a hash that does
not match the record's content (an edit), or a MAC that does not match the
key (a forged record). It streams, so a day of records is checked without
holding it in memory.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings

from audit.chain import GENESIS, compute_hash, compute_mac, record_body
from audit.models import AuditChainHead, AuditRecord

FIELDS = ("seq", "created_at", "actor", "action", "subject", "payload", "prev_hash", "hash", "mac")


@dataclass(frozen=True, slots=True)
class VerifyResult:
    verified: int
    broken_seq: int | None = None
    problem: str = ""
    first_seq: int | None = None
    last_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


def verify_rows(rows: Iterable[tuple], *, key: str, prev_hash: str = GENESIS, prev_seq: int = 0) -> VerifyResult:
    key_bytes = key.encode("utf-8")
    count = 0
    first = None
    for seq, created_at, actor, action, subject, payload, row_prev, row_hash, mac in rows:
        if first is None:
            first = seq
        if seq != prev_seq + 1:
            problem = "missing record(s) before it" if seq > prev_seq + 1 else "out of order or duplicated"
            return VerifyResult(count, seq, f"sequence {seq} follows {prev_seq}: {problem}", first, prev_seq)
        if row_prev != prev_hash:
            return VerifyResult(count, seq, "prev_hash does not point at the previous record", first, prev_seq)
        expected = compute_hash(prev_hash, record_body(seq, created_at, actor, action, subject, payload))
        if expected != row_hash:
            return VerifyResult(count, seq, "content does not match its hash (edited)", first, prev_seq)
        if not hmac.compare_digest(compute_mac(row_hash, key_bytes.decode("utf-8")), mac):
            return VerifyResult(count, seq, "MAC does not match the audit key (forged)", first, prev_seq)
        prev_hash, prev_seq = row_hash, seq
        count += 1
    return VerifyResult(count, None, "", first, prev_seq if count else None)


def _raw_rows(queryset, chunk: int = 10_000):
    """Rows straight from a cursor: the ORM's per-row conversions cost more than
    the hashing. Timestamps and JSON are converted here, the same way."""
    import json

    from django.db import connection

    sql, params = queryset.values_list(*FIELDS).query.sql_with_params()
    sqlite = connection.vendor == "sqlite"
    loads = json.loads
    parse = dt.datetime.fromisoformat
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        while True:
            batch = cursor.fetchmany(chunk)
            if not batch:
                return
            for seq, created_at, actor, action, subject, payload, prev, record_hash, mac in batch:
                if isinstance(created_at, str):  # SQLite keeps UTC text…
                    created_at = parse(created_at)
                if created_at.tzinfo is None:  # …and hands it back naive
                    created_at = created_at.replace(tzinfo=dt.UTC)
                if isinstance(payload, str) or sqlite:
                    payload = loads(payload)
                yield seq, created_at, actor, action, subject, payload, prev, record_hash, mac


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


def verify(date_from: dt.date | None = None, date_to: dt.date | None = None, *, key: str | None = None) -> VerifyResult:
    """Verify the chain (or a date range of it, linked to the record before it)."""
    key = settings.AUDIT_HMAC_KEY if key is None else key
    queryset = records(date_from, date_to)
    first = queryset.values_list("seq", flat=True).first()
    prev_hash, prev_seq = GENESIS, 0
    if first is not None and first > 1:
        before = AuditRecord.objects.filter(seq=first - 1).values_list("hash", flat=True).first()
        if before is None:
            return VerifyResult(0, first, f"the record before {first} is missing", first, None)
        prev_hash, prev_seq = before, first - 1
    result = verify_rows(_raw_rows(queryset), key=key, prev_hash=prev_hash, prev_seq=prev_seq)
    if result.ok and date_to is None:
        # The head remembers the last sequence: truncating the tail is caught here.
        head = AuditChainHead.objects.filter(id=1).values_list("seq", flat=True).first()
        last = result.last_seq or prev_seq
        if head is not None and head != last:
            return VerifyResult(
                result.verified,
                min(head, last) + 1,
                f"the chain head says the chain ends at {head}, the records end at {last}",
                result.first_seq,
                last,
            )
    return result
