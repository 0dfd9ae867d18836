"""Appending to and hashing the audit chain.

Each record's hash is ``sha256(prev_hash ‖ canonical_json(record))`` and its
MAC is ``HMAC-SHA256(AUDIT_HMAC_KEY, hash)``. Canonical JSON: sorted keys, no
whitespace, UTF-8, Decimals and datetimes as strings. The key is read from
settings (the environment), never stored in the database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from audit.models import AuditChainHead, AuditRecord

GENESIS = "0" * 64


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def normalise_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """What the JSON column will give back, so hashing before and after storage agree."""
    return json.loads(canonical_json(payload))


_dumps = json.JSONEncoder(ensure_ascii=False).encode


def record_body(seq: int, created_at: dt.datetime, actor: str, action: str, subject: str, payload: dict) -> str:
    """Canonical JSON of a record: the same text as ``canonical_json`` of the dict
    {action, actor, created_at, payload, seq, subject}, assembled in key order by
    hand because verification runs it for every record."""
    if created_at.utcoffset() != dt.timedelta(0):
        created_at = created_at.astimezone(dt.UTC)
    stamp = created_at.replace(tzinfo=dt.UTC).isoformat(timespec="microseconds")
    return (
        f'{{"action":{_dumps(action)},"actor":{_dumps(actor)},"created_at":"{stamp}",'
        f'"payload":{canonical_json(payload)},"seq":{int(seq)},"subject":{_dumps(subject)}}}'
    )


def compute_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def compute_mac(record_hash: str, key: str | None = None) -> str:
    key = settings.AUDIT_HMAC_KEY if key is None else key
    return hmac.digest(key.encode("utf-8"), record_hash.encode("ascii"), "sha256").hex()


def append(
    action: str,
    *,
    actor: str = "system",
    subject: str = "",
    payload: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> AuditRecord:
    """Append one record. Call it inside the transaction of what it records,
    so the decision and its audit record commit together or not at all.

    Three plain statements (lock the chain head, insert, move the head): this
    runs inside every decision's transaction, so it stays off the ORM's
    per-object machinery. Without an enclosing transaction it opens its own.
    """
    if not connection.in_atomic_block:
        with transaction.atomic():
            return append(action, actor=actor, subject=subject, payload=payload, at=at)
    payload = normalise_payload(payload or {})
    created_at = (at or timezone.now()).astimezone(dt.UTC)
    actor, action, subject = actor[:150], action[:60], subject[:200]
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        cursor.execute(_SELECT_HEAD + (" FOR UPDATE" if postgres else ""))
        row = cursor.fetchone()
        if row is None:
            cursor.execute(_CREATE_HEAD, [GENESIS])
            row = (0, GENESIS)
        seq, prev_hash = row[0] + 1, row[1]
        record_hash = compute_hash(prev_hash, record_body(seq, created_at, actor, action, subject, payload))
        mac = compute_mac(record_hash)
        cursor.execute(
            _INSERT
            + (
                "(%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s) RETURNING id"
                if postgres
                else "(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
            ),
            [
                seq,
                connection.ops.adapt_datetimefield_value(created_at),
                actor,
                action,
                subject,
                canonical_json(payload),
                prev_hash,
                record_hash,
                mac,
            ],
        )
        record_id = cursor.fetchone()[0] if postgres else cursor.lastrowid
        cursor.execute(_MOVE_HEAD, [seq, record_hash])
    record = AuditRecord(
        id=record_id,
        seq=seq,
        created_at=created_at,
        actor=actor,
        action=action,
        subject=subject,
        payload=payload,
        prev_hash=prev_hash,
        hash=record_hash,
        mac=mac,
    )
    record._state.adding = False
    return record


# Table names come from the models' metadata, never from input.
_TABLE = AuditRecord._meta.db_table
_HEAD = AuditChainHead._meta.db_table
_SELECT_HEAD = f"SELECT seq, hash FROM {_HEAD} WHERE id = 1"  # noqa: S608
_CREATE_HEAD = f"INSERT INTO {_HEAD} (id, seq, hash) VALUES (1, 0, %s)"  # noqa: S608
_INSERT = f"INSERT INTO {_TABLE} (seq, created_at, actor, action, subject, payload, prev_hash, hash, mac) VALUES "  # noqa: S608
_MOVE_HEAD = f"UPDATE {_HEAD} SET seq = %s, hash = %s WHERE id = 1"  # noqa: S608
