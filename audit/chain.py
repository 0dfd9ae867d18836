"""Appending to and hashing the audit chain.

Each record's hash is ``sha256(prev_hash ‖ canonical_json(record))`` and its
MAC is ``HMAC-SHA256(AUDIT_HMAC_KEY, hash)``; the chain head's MAC is
``HMAC-SHA256(AUDIT_HMAC_KEY, "head|seq|hash")``. Canonical JSON: sorted keys, no
whitespace, UTF-8, Decimals and datetimes as strings. The key is read from
settings (the environment), never stored in the database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import weakref
from decimal import Decimal
from functools import lru_cache, partial
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from audit import checkpoints
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


# One encoder, built once: ``json.dumps`` with options builds a new one per call.
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default).encode


def canonical_json(data: Any) -> str:
    return _canonical(data)


def normalise_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """What the JSON column will give back, so hashing before and after storage agree."""
    return json.loads(canonical_json(payload))


_dumps = json.JSONEncoder(ensure_ascii=False).encode


def record_body(seq: int, created_at: dt.datetime, actor: str, action: str, subject: str, payload: dict) -> str:
    """Canonical JSON of a record: the same text as ``canonical_json`` of the dict
    {action, actor, created_at, payload, seq, subject}, assembled in key order by
    hand because verification runs it for every record."""
    return record_body_text(seq, utc_stamp(created_at), actor, action, subject, canonical_json(payload))


def utc_stamp(created_at: dt.datetime) -> str:
    if created_at.utcoffset() != dt.timedelta(0):
        created_at = created_at.astimezone(dt.UTC)
    return created_at.replace(tzinfo=dt.UTC).isoformat(timespec="microseconds")


def record_body_text(seq: int, stamp: str, actor: str, action: str, subject: str, payload_json: str) -> str:
    """``record_body`` from parts already in canonical form (the UTC stamp and the
    payload's canonical JSON), for the append and the verifier's fast path."""
    return (
        f'{{"action":{_dumps(action)},"actor":{_dumps(actor)},"created_at":"{stamp}",'
        f'"payload":{payload_json},"seq":{int(seq)},"subject":{_dumps(subject)}}}'
    )


def compute_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


@lru_cache(maxsize=4)
def mac_template(key: str) -> hmac.HMAC:
    """An HMAC-SHA256 keyed once: each MAC is a copy of it fed one message,
    half the cost of keying afresh (``hmac.digest``) every time."""
    return hmac.new(key.encode("utf-8"), digestmod=hashlib.sha256)


def keyed_mac(template: hmac.HMAC, message: bytes) -> str:
    mac = template.copy()
    mac.update(message)
    return mac.hexdigest()


def compute_mac(record_hash: str, key: str | None = None) -> str:
    key = settings.AUDIT_HMAC_KEY if key is None else key
    return keyed_mac(mac_template(key), record_hash.encode("ascii"))


def compute_head_mac(seq: int, record_hash: str, key: str | None = None) -> str:
    """The chain head's MAC binds the position to the hash. A record's own MAC
    covers its hash alone, so it cannot be copied onto a head moved back to it."""
    key = settings.AUDIT_HMAC_KEY if key is None else key
    return keyed_mac(mac_template(key), f"head|{int(seq)}|{record_hash}".encode("ascii"))


# The chain head each database connection last wrote: a guess that saves reading
# the head on every append. It is never trusted: the append moves the head with
# an UPDATE conditional on exactly this seq and hash, and reads the head only
# when that matches no row (another process appended, or the transaction that
# wrote the guess rolled back).
_last_head: weakref.WeakKeyDictionary[Any, tuple[int, str]] = weakref.WeakKeyDictionary()


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

    Two plain statements (move the chain head and its MAC, insert the record)
    on the driver's own cursor: this runs inside every decision's transaction,
    so it stays off the ORM's per-object machinery and Django's cursor wrappers
    (query logging under DEBUG alone cost more than the rest). Moving the head
    first takes the lock that serialises appenders (the row lock on PostgreSQL,
    the write lock on SQLite) before the record is built on it; the head is
    read only when this connection's last head is not the database's (see
    ``_last_head``). Database errors still surface as Django's. Without an
    enclosing transaction it opens its own. Every ``AUDIT_CHECKPOINT_EVERY``
    records a signed checkpoint is written outside the database once this
    commits.
    """
    conn = connections[DEFAULT_DB_ALIAS]
    if not conn.in_atomic_block:
        with transaction.atomic(using=conn.alias):
            return append(action, actor=actor, subject=subject, payload=payload, at=at)
    payload_json = _canonical(payload or {})
    created_at = (at or timezone.now()).astimezone(dt.UTC)
    stamp = created_at.isoformat(timespec="microseconds")
    actor, action, subject = actor[:150], action[:60], subject[:200]
    template = mac_template(settings.AUDIT_HMAC_KEY)
    postgres = conn.vendor == "postgresql"
    with conn.wrap_database_errors:
        cursor = conn.connection.cursor()
        try:
            guess = _last_head.get(conn)
            moved = False
            if guess is not None:
                seq, prev_hash = guess[0] + 1, guess[1]
                record_hash, head_mac = _link(seq, prev_hash, stamp, actor, action, subject, payload_json, template)
                cursor.execute(_ADVANCE_HEAD_PG if postgres else _ADVANCE_HEAD, [seq, record_hash, head_mac, *guess])
                moved = cursor.rowcount == 1
            if not moved:
                cursor.execute(_SELECT_HEAD_PG if postgres else _SELECT_HEAD)
                row = cursor.fetchone()
                if row is None:
                    cursor.execute(_CREATE_HEAD_PG if postgres else _CREATE_HEAD, [GENESIS])
                    row = (0, GENESIS)
                seq, prev_hash = row[0] + 1, row[1]
                record_hash, head_mac = _link(seq, prev_hash, stamp, actor, action, subject, payload_json, template)
                cursor.execute(_MOVE_HEAD_PG if postgres else _MOVE_HEAD, [seq, record_hash, head_mac])
            mac = keyed_mac(template, record_hash.encode("ascii"))
            if postgres:
                cursor.execute(
                    _INSERT_PG,
                    [seq, created_at, actor, action, subject, payload_json, prev_hash, record_hash, mac],
                )
                record_id = cursor.fetchone()[0]
            else:
                # Django keeps SQLite datetimes as naive UTC text, str(datetime) style:
                # the stamp's date and time, microseconds only when there are any.
                naive = f"{stamp[:10]} {stamp[11:26] if created_at.microsecond else stamp[11:19]}"
                cursor.execute(_INSERT, [seq, naive, actor, action, subject, payload_json, prev_hash, record_hash, mac])
                record_id = cursor.lastrowid
        except BaseException:
            _last_head.pop(conn, None)
            raise
        finally:
            cursor.close()
    _last_head[conn] = (seq, record_hash)
    if seq % settings.AUDIT_CHECKPOINT_EVERY == 0:
        transaction.on_commit(
            partial(checkpoints.write, seq, record_hash, reason="every"), using=conn.alias, robust=True
        )
    # Positional arguments in field order: the model's fast construction path.
    record = AuditRecord(
        record_id, seq, created_at, actor, action, subject, json.loads(payload_json), prev_hash, record_hash, mac
    )
    record._state.adding = False
    return record


def _link(
    seq: int, prev_hash: str, stamp: str, actor: str, action: str, subject: str, payload_json: str, template
) -> tuple[str, str]:
    """The record's hash on ``prev_hash`` and the MAC of the head moved to it."""
    body = record_body_text(seq, stamp, actor, action, subject, payload_json)
    record_hash = hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()
    return record_hash, keyed_mac(template, f"head|{seq}|{record_hash}".encode("ascii"))


# Table names come from the models' metadata, never from input.
_TABLE = AuditRecord._meta.db_table
_HEAD = AuditChainHead._meta.db_table
_COLUMNS = "(seq, created_at, actor, action, subject, payload, prev_hash, hash, mac)"
_SELECT_HEAD = f"SELECT seq, hash FROM {_HEAD} WHERE id = 1"  # noqa: S608
_SELECT_HEAD_PG = _SELECT_HEAD + " FOR UPDATE"
_CREATE_HEAD = f"INSERT INTO {_HEAD} (id, seq, hash, mac) VALUES (1, 0, ?, '')"  # noqa: S608
_CREATE_HEAD_PG = _CREATE_HEAD.replace("?", "%s")
_INSERT = f"INSERT INTO {_TABLE} {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
_INSERT_PG = f"INSERT INTO {_TABLE} {_COLUMNS} VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s) RETURNING id"  # noqa: S608
_MOVE_HEAD = f"UPDATE {_HEAD} SET seq = ?, hash = ?, mac = ? WHERE id = 1"  # noqa: S608
_MOVE_HEAD_PG = _MOVE_HEAD.replace("?", "%s")
_ADVANCE_HEAD = _MOVE_HEAD + " AND seq = ? AND hash = ?"
_ADVANCE_HEAD_PG = _ADVANCE_HEAD.replace("?", "%s")
