"""Signed checkpoints of the audit chain, kept outside the database.

A database superuser can delete the newest records and move the chain head
back; the hash chain alone cannot tell. So every ``AUDIT_CHECKPOINT_EVERY``
records, and at the close (the engine's stop, ``manage.py audit_checkpoint``),
the chain's position is written where the database cannot reach it: one JSON
line ``{"seq", "hash", "at", "reason", "mac"}`` appended to
``AUDIT_CHECKPOINT_DIR/checkpoints.jsonl``, and the same text sent to the
configured alert sinks (Slack, Telegram, PagerDuty) as out-of-band evidence.
``mac`` is ``HMAC-SHA256(AUDIT_HMAC_KEY, "checkpoint|seq|hash|at|reason")``.

``verify_audit`` then requires that record ``seq`` of the latest checkpoint
still exists with that hash. Writing never reaches the caller: it runs after
commit, and a failure is logged (a lost checkpoint weakens evidence, it must
not stop trading).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError

from audit.models import AuditChainHead
from trading.sinks import AlertMessage, configured_sinks, get_sink

log = logging.getLogger(__name__)
FILENAME = "checkpoints.jsonl"


class CheckpointError(Exception):
    """The checkpoints cannot be read or one of them is not genuine."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    reason: str
    mac: str

    def line(self) -> str:
        data = {"seq": self.seq, "hash": self.hash, "at": self.at, "reason": self.reason, "mac": self.mac}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))


def sign(seq: int, record_hash: str, at: str, reason: str, key: str | None = None) -> str:
    key = settings.AUDIT_HMAC_KEY if key is None else key
    message = f"checkpoint|{int(seq)}|{record_hash}|{at}|{reason}".encode()
    return hmac.digest(key.encode("utf-8"), message, "sha256").hex()


def directory() -> Path:
    return Path(settings.AUDIT_CHECKPOINT_DIR)


def make(seq: int, record_hash: str, *, reason: str, at: dt.datetime | None = None) -> Checkpoint:
    stamp = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
    return Checkpoint(seq, record_hash, stamp, reason, sign(seq, record_hash, stamp, reason))


def write(seq: int, record_hash: str, *, reason: str, at: dt.datetime | None = None) -> Checkpoint | None:
    """Append a checkpoint to the file and hand it to the sinks. Returns it, or
    None when the file could not be written (logged)."""
    checkpoint = make(seq, record_hash, reason=reason, at=at)
    try:
        folder = directory()
        folder.mkdir(parents=True, exist_ok=True)
        # One short line written with O_APPEND: concurrent writers (engine, web,
        # workers) never interleave inside a line.
        fd = os.open(folder / FILENAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (checkpoint.line() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("audit checkpoint not written", extra={"seq": seq, "error": type(exc).__name__})
        return None
    log.info("audit checkpoint written", extra={"seq": seq, "reason": reason})
    if settings.AUDIT_CHECKPOINT_TO_SINKS:
        threading.Thread(target=_send, args=(checkpoint,), name="audit-checkpoint", daemon=True).start()
    return checkpoint


def _send(checkpoint: Checkpoint) -> None:
    try:
        names = [name for name in configured_sinks() if get_sink(name).accepts("INFO")]  # evidence, not a page
    except Exception:
        log.exception("alert sinks could not be loaded for an audit checkpoint")
        return
    created = dt.datetime.fromisoformat(checkpoint.at)
    message = AlertMessage(
        0, "INFO", "audit", f"Audit checkpoint #{checkpoint.seq}", checkpoint.line(), settings.QUANTHUB_ACCOUNT, created
    )
    for name in names:
        try:
            get_sink(name).send(message)
        except Exception as exc:  # one sink down must not hide the checkpoint from the others
            log.warning("audit checkpoint not delivered", extra={"sink": name, "error": type(exc).__name__})


def write_head(*, reason: str = "close") -> Checkpoint | None:
    """A checkpoint of the chain as it stands (the close of the day, a stop)."""
    try:
        head = AuditChainHead.objects.filter(id=1).values_list("seq", "hash").first()
    except DatabaseError as exc:  # a stop with the database down still stops
        log.error("audit checkpoint not written: the chain head is unreadable", extra={"error": type(exc).__name__})
        return None
    if head is None or head[0] == 0:
        return None
    return write(head[0], head[1], reason=reason)


def read(key: str | None = None, folder: Path | None = None) -> list[Checkpoint]:
    """Every checkpoint in the file, in file order. Raises ``CheckpointError`` for
    a missing directory, a line that does not parse, or one whose MAC does not
    match the key: an altered checkpoint is tampering, not something to skip."""
    folder = directory() if folder is None else folder
    if not folder.is_dir():
        raise CheckpointError(
            f"the audit checkpoint directory {folder} does not exist (AUDIT_CHECKPOINT_DIR): without it a "
            "truncated chain cannot be told from a whole one; restore it from backup or the alert channel"
        )
    path = folder / FILENAME
    if not path.exists():
        return []
    found = []
    for number, text in enumerate(path.read_text(encoding="ascii", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            data = json.loads(text)
            checkpoint = Checkpoint(
                int(data["seq"]), str(data["hash"]), str(data["at"]), str(data["reason"]), str(data["mac"])
            )
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"{path} line {number} is not a checkpoint (corrupted or altered)") from None
        expected = sign(checkpoint.seq, checkpoint.hash, checkpoint.at, checkpoint.reason, key)
        if not hmac.compare_digest(expected, checkpoint.mac):
            raise CheckpointError(
                f"{path} line {number} (#{checkpoint.seq}) is not signed by the audit key: a forged checkpoint"
            )
        found.append(checkpoint)
    return found


def latest(key: str | None = None, folder: Path | None = None) -> Checkpoint | None:
    checkpoints = read(key, folder)
    # The newest of the furthest: the file is in writing order.
    return max(reversed(checkpoints), key=lambda c: c.seq) if checkpoints else None
