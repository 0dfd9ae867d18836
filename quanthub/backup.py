"""Backups of the database and the restore drill (docs/operations.md).

``backup`` writes one timestamped file into ``QUANTHUB_BACKUP_DIR``: PostgreSQL
through ``pg_dump --format=custom`` (compressed, restorable in parallel with
``pg_restore --jobs``), SQLite through its online backup API (a consistent copy
while the engine keeps writing). Beside it, ``<file>.sha256`` in the usual
``sha256sum`` format. With ``QUANTHUB_BACKUP_S3_BUCKET`` both go to S3-compatible
storage as well (boto3). The newest ``QUANTHUB_BACKUP_KEEP`` are kept, locally
and in the bucket.

``restore`` loads a backup into a scratch database (never the live one),
after checking its checksum, and says how long that took.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection

log = logging.getLogger(__name__)

SUFFIX = {"postgresql": ".dump", "sqlite": ".sqlite3"}


class BackupError(Exception):
    pass


@dataclass(frozen=True)
class BackupResult:
    path: Path
    sha256: str
    size: int
    seconds: float
    s3_key: str = ""


def backup_dir() -> Path:
    path = Path(settings.QUANTHUB_BACKUP_DIR)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pg_env(db: dict) -> dict[str, str]:
    # libpq reads the password from the environment: it never shows in `ps`.
    env = {**os.environ}
    for key, name in (("HOST", "PGHOST"), ("PORT", "PGPORT"), ("USER", "PGUSER"), ("PASSWORD", "PGPASSWORD")):
        if db.get(key):
            env[name] = str(db[key])
    return env


def _run(command: list[str], env: dict | None = None) -> None:
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    except FileNotFoundError:
        raise BackupError(f"{command[0]} is not installed (PostgreSQL client tools are needed)") from None
    if done.returncode:
        raise BackupError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def backup(*, now: dt.datetime | None = None, upload: bool = True, keep: int | None = None) -> BackupResult:
    vendor = connection.vendor
    if vendor not in SUFFIX:
        raise BackupError(f"backups support PostgreSQL and SQLite, not {vendor}")
    now = now or dt.datetime.now(tz=dt.UTC)
    name = f"quanthub-{now.astimezone(dt.UTC):%Y%m%dT%H%M%S%fZ}{SUFFIX[vendor]}"
    target = backup_dir() / name
    partial = target.with_name(target.name + ".partial")
    started = time.perf_counter()
    db = connection.settings_dict
    if vendor == "postgresql":
        _run(["pg_dump", "--format=custom", "--no-owner", f"--file={partial}", db["NAME"]], _pg_env(db))
    else:
        # Through Django's own connection: works for a file and for an in-memory test database.
        connection.ensure_connection()
        dest = sqlite3.connect(partial)
        try:
            connection.connection.backup(dest, pages=4096)
        finally:
            dest.close()
    partial.replace(target)  # a file under its final name is complete
    digest = sha256_of(target)
    target.with_name(target.name + ".sha256").write_text(f"{digest}  {target.name}\n")
    seconds = time.perf_counter() - started
    key = ""
    if upload and settings.QUANTHUB_BACKUP_S3_BUCKET:
        try:
            key = upload_to_s3(target)
        except Exception as exc:  # boto3 raises many kinds; the local file stands either way
            raise BackupError(f"backup written to {target}, but the upload to S3 failed: {exc}") from None
    prune(keep or settings.QUANTHUB_BACKUP_KEEP)
    result = BackupResult(target, digest, target.stat().st_size, seconds, key)
    log.info("backup written", extra={"path": str(target), "bytes": result.size, "seconds": round(seconds, 3)})
    return result


def backups() -> list[Path]:
    """Local backups, newest first (names sort by their UTC time stamp)."""
    files = [p for p in backup_dir().glob("quanthub-*") if p.suffix in SUFFIX.values()]
    return sorted(files, key=lambda p: p.name, reverse=True)


def prune(keep: int) -> list[Path]:
    gone = backups()[keep:]
    for path in gone:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    if settings.QUANTHUB_BACKUP_S3_BUCKET:
        client = s3_client()
        prefix = settings.QUANTHUB_BACKUP_S3_PREFIX
        listed = client.list_objects_v2(Bucket=settings.QUANTHUB_BACKUP_S3_BUCKET, Prefix=prefix)
        names = sorted((o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith(".sha256")), reverse=True)
        for key in names[keep:]:
            for each in (key, key + ".sha256"):
                client.delete_object(Bucket=settings.QUANTHUB_BACKUP_S3_BUCKET, Key=each)
    return gone


def verify_checksum(path: Path) -> str:
    sidecar = path.with_name(path.name + ".sha256")
    try:
        recorded = sidecar.read_text().split()[0]
    except (OSError, IndexError):
        raise BackupError(f"{path.name}: no checksum file beside it") from None
    actual = sha256_of(path)
    if actual != recorded:
        raise BackupError(f"{path.name}: SHA-256 {actual[:12]}… does not match the recorded {recorded[:12]}…")
    return actual


# --- S3 -------------------------------------------------------------------------------


def s3_client():
    import boto3  # only where a bucket is configured
    from botocore.config import Config

    return boto3.client(
        "s3",
        config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2}),
        endpoint_url=settings.QUANTHUB_BACKUP_S3_ENDPOINT or None,
        region_name=settings.QUANTHUB_BACKUP_S3_REGION,
        aws_access_key_id=settings.QUANTHUB_BACKUP_S3_ACCESS_KEY or None,
        aws_secret_access_key=settings.QUANTHUB_BACKUP_S3_SECRET_KEY or None,
    )


def upload_to_s3(path: Path) -> str:
    client = s3_client()
    key = settings.QUANTHUB_BACKUP_S3_PREFIX + path.name
    bucket = settings.QUANTHUB_BACKUP_S3_BUCKET
    sidecar = path.with_name(path.name + ".sha256")
    client.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": sidecar.read_text().split()[0]}})
    client.upload_file(str(sidecar), bucket, key + ".sha256")
    return key


def download_latest_from_s3() -> Path | None:
    client = s3_client()
    bucket, prefix = settings.QUANTHUB_BACKUP_S3_BUCKET, settings.QUANTHUB_BACKUP_S3_PREFIX
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix)
    names = sorted((o["Key"] for o in listed.get("Contents", []) if not o["Key"].endswith(".sha256")), reverse=True)
    if not names:
        return None
    key = names[0]
    target = backup_dir() / key[len(prefix) :]
    client.download_file(bucket, key, str(target))
    client.download_file(bucket, key + ".sha256", str(target) + ".sha256")
    return target


# --- restore --------------------------------------------------------------------------


def restore(path: Path, *, scratch: str | None = None) -> tuple[dict, float]:
    """Restore ``path`` into a scratch database; return its settings and the seconds taken.

    PostgreSQL: the scratch database (default ``<name>_restore_drill``) is dropped
    and created again, then ``pg_restore --jobs=2``. SQLite: the backup is copied
    through the backup API into ``<file>_restore_drill.sqlite3``.
    """
    verify_checksum(path)
    db = dict(connection.settings_dict)
    if db["NAME"] == scratch:
        raise BackupError("refusing to restore over the live database")
    started = time.perf_counter()
    if path.suffix == SUFFIX["postgresql"]:
        if connection.vendor != "postgresql":
            raise BackupError(f"{path.name} is a PostgreSQL dump; restore it with DATABASE_URL on PostgreSQL")
        name = scratch or f"{db['NAME']}_restore_drill"
        if name == db["NAME"]:
            raise BackupError("refusing to restore over the live database")
        env = _pg_env(db)
        _run(["dropdb", "--if-exists", "--force", name], env)
        _run(["createdb", name], env)
        _run(["pg_restore", "--no-owner", "--jobs=2", f"--dbname={name}", str(path)], env)
        db["NAME"] = name
    else:
        name = scratch or str(backup_dir() / "restore_drill.sqlite3")
        if connection.vendor == "sqlite" and str(db["NAME"]) == name:
            raise BackupError("refusing to restore over the live database")
        Path(name).unlink(missing_ok=True)
        source = sqlite3.connect(path)
        dest = sqlite3.connect(name)
        try:
            source.backup(dest, pages=8192)
        finally:
            dest.close()
            source.close()
        db = {"ENGINE": "django.db.backends.sqlite3", "NAME": name}
    return db, time.perf_counter() - started


def database_url(db: dict) -> str:
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db.get("USER") or ""
    host = f"{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}"
    return f"postgres://{auth}@{host}/{db['NAME']}"


def copy_file(path: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for each in (path, path.with_name(path.name + ".sha256")):
        shutil.copy2(each, into / each.name)
    return into / path.name
