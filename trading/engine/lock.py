"""One active engine per account.

Two engines trading one account would send every order twice, so the engine
holds an exclusive lock for its account for as long as it runs, and a second
engine waits as a standby until the lock frees up.

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) on a
  connection of its own, opened with psycopg from the default database's
  settings. Django's connections come and go (``close_old_connections``,
  transactions, the ``sync_to_async`` thread); this one stays open for the
  engine's life. The server drops the lock when the session ends: the engine
  exits, is killed, or its host disappears (server-side TCP keepalives notice
  that within about eleven seconds). A session that dies under a running engine means the lock
  is gone and another engine may take over, so the holder must watch it
  (``is_alive``/``watch``) and stop trading when it is lost.
* SQLite (one machine): an exclusive ``flock`` on ``VAR_DIR/locks/engine-<account>.lock``.
  The kernel drops it when the process exits or is killed.

``engine_lock(account)`` picks the right one from ``settings.IS_POSTGRES``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import time
from pathlib import Path

from django.conf import settings

log = logging.getLogger(__name__)

# libpq parameters worth passing on from DATABASES["default"]["OPTIONS"]; the rest
# (pool, isolation_level, server_side_binding...) are Django's own.
_LIBPQ_OPTIONS = {
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "options",
    "passfile",
    "service",
    "target_session_attrs",
    "channel_binding",
    "gssencmode",
}


def lock_key(account: str) -> int:
    """A stable signed 64-bit key (PostgreSQL's bigint) for the account's engine lock."""
    digest = hashlib.blake2b(f"quanthub-engine:{account}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class EngineLock:
    """The contract both kinds follow. ``acquire`` never waits unless asked to."""

    kind = "abstract"

    def __init__(self, account: str):
        self.account = account
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    def acquire(self, blocking: bool = False, timeout: float | None = None, poll_s: float = 1.0) -> bool:
        """Take the lock; with ``blocking`` retry every ``poll_s`` until ``timeout`` (None: for ever)."""
        if self._held:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._try():
                self._held = True
                log.info("engine lock acquired", extra={"account": self.account, "lock": self.describe()})
                return True
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))

    def release(self) -> None:
        if self._held:
            log.info("engine lock released", extra={"account": self.account, "lock": self.describe()})
        self._held = False
        self._release()

    def is_alive(self) -> bool:
        """Whether the lock is still ours (False once lost or released)."""
        return self._held and self._check()

    async def watch(self, interval: float = 1.0) -> None:
        """Return as soon as the held lock is lost; meant to run beside the engine as a task.

        A lock whose session ended while nobody else took it (a database restart,
        a network blip) is taken again, for as long as the database stays away;
        it is lost only when another engine holds it."""
        while True:
            alive = await asyncio.to_thread(self.is_alive)
            while alive:
                await asyncio.sleep(interval)
                alive = await asyncio.to_thread(self.is_alive)
            if not self._held:
                return
            if not self.retakeable:
                break
            log.warning("engine lock: its session ended; taking it again", extra={"account": self.account})
            status = "unreachable"
            while self._held and status == "unreachable":
                await asyncio.sleep(interval)
                status = await asyncio.to_thread(self._retake)
            if status != "ours":
                break
            log.warning("engine lock taken again", extra={"account": self.account, "lock": self.describe()})
        if self._held:
            log.critical("engine lock lost", extra={"account": self.account, "lock": self.describe()})
            self._held = False

    retakeable = False  # whether a lock whose session ended can be taken again (see watch)

    def _retake(self) -> str:
        """"ours", "taken" (another engine holds it) or "unreachable"."""
        return "ours" if self._try() else "taken"

    def describe(self) -> str:
        raise NotImplementedError

    def _try(self) -> bool:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _check(self) -> bool:
        raise NotImplementedError

    def __enter__(self) -> EngineLock:
        if not self.acquire():
            raise RuntimeError(f"another engine holds account {self.account!r} ({self.describe()})")
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._release()


class PostgresEngineLock(EngineLock):
    kind = "postgres"
    retakeable = True

    def __init__(self, account: str, database: dict | None = None):
        super().__init__(account)
        self.key = lock_key(account)
        self.database = database if database is not None else settings.DATABASES["default"]
        self._conn = None

    def describe(self) -> str:
        return f"pg_advisory_lock({self.key}) on {self.database.get('NAME')}"

    def _connect(self):
        import psycopg

        db = self.database
        params = {k: v for k, v in (db.get("OPTIONS") or {}).items() if k in _LIBPQ_OPTIONS}
        # The server ends the session of a vanished engine host (and so frees the
        # lock) after ~11 s of silence instead of its default two hours...
        server = "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
        params.update(
            dbname=db["NAME"],
            user=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=db.get("PORT") or None,
            application_name=f"quanthub-engine-lock:{self.account}"[:63],
            options=f"{params.get('options', '')} {server}".strip(),
            connect_timeout=5,
            # ...and the engine gives up on an unanswered check after 4 s, so on a
            # network cut the old engine stops before a standby can take over.
            tcp_user_timeout=4000,
            keepalives=1,
            keepalives_idle=2,
            keepalives_interval=1,
            keepalives_count=2,
        )
        return psycopg.connect(autocommit=True, **{k: v for k, v in params.items() if v is not None})

    def _try(self) -> bool:
        import psycopg

        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
            return bool(self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0])
        except psycopg.Error as exc:
            log.warning("engine lock: database unreachable", extra={"account": self.account, "error": str(exc)})
            self._close()
            return False

    def _retake(self) -> str:
        import psycopg

        self._close()
        try:
            self._conn = self._connect()
            got = bool(self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()[0])
        except psycopg.Error:
            self._close()
            return "unreachable"
        return "ours" if got else "taken"

    def _check(self) -> bool:
        import psycopg

        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            # Session-level advisory locks live as long as the session: a live
            # session that took the lock still has it.
            conn.execute("SELECT 1").fetchone()
            return True
        except psycopg.Error:
            self._close()
            return False

    def _release(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if not conn.closed:
            with contextlib.suppress(Exception):
                conn.execute("SELECT pg_advisory_unlock_all()")
        self._close()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class FileEngineLock(EngineLock):
    kind = "file"

    def __init__(self, account: str, directory: Path | str | None = None):
        super().__init__(account)
        directory = Path(directory) if directory is not None else Path(settings.VAR_DIR) / "locks"
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", account)
        self.path = directory / f"engine-{safe}.lock"
        self._fd: int | None = None

    def describe(self) -> str:
        return f"flock {self.path}"

    def _try(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # Who holds it, for an operator looking at the file.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def _check(self) -> bool:
        if self._fd is None:
            return False
        try:
            # Someone deleting the file would let a new engine lock a new file.
            return os.fstat(self._fd).st_ino == os.stat(self.path).st_ino
        except OSError:
            return False

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def holder_pid(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None


def engine_lock(account: str) -> EngineLock:
    """The account's engine lock for this deployment's database."""
    return PostgresEngineLock(account) if settings.IS_POSTGRES else FileEngineLock(account)
