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
from django.db import transaction
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
    so the decision and its audit record commit together or not at all."""
    payload = normalise_payload(payload or {})
    created_at = at or timezone.now()
    # Microsecond precision round-trips through both databases unchanged.
    created_at = created_at.astimezone(dt.UTC)
    actor, action, subject = actor[:150], action[:60], subject[:200]
    with transaction.atomic():
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(id=1)
        seq = head.seq + 1
        body = record_body(seq, created_at, actor, action, subject, payload)
        record_hash = compute_hash(head.hash, body)
        record = AuditRecord(
            seq=seq,
            created_at=created_at,
            actor=actor,
            action=action,
            subject=subject,
            payload=payload,
            prev_hash=head.hash,
            hash=record_hash,
            mac=compute_mac(record_hash),
        )
        record.save()
        AuditChainHead.objects.filter(id=1).update(seq=seq, hash=record_hash)
    return record
