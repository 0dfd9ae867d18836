"""One engine per account: the lock, the standby's takeover, a clean SIGTERM.

The lock tests hold locks in this process and in child processes. The engine
tests start real ``manage.py run_engine`` processes on a database of their own
(a SQLite file, or a PostgreSQL database created here and dropped at the end),
cloned from one migrated template so that each test pays for ``migrate`` once.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from trading.engine.lock import FileEngineLock, PostgresEngineLock, engine_lock, lock_key

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-11-23"
SPEED = "20"  # the 09:16:30 informed flow comes ~5 s after the engine starts

HOLDER = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
import django
django.setup()
from trading.engine.lock import engine_lock
locks = [engine_lock(account) for account in sys.argv[2:]]
print(" ".join("held" if lock.acquire() else "refused" for lock in locks), flush=True)
time.sleep(120)
"""

SETUP = """
import os, sys, datetime as dt
sys.path.insert(0, sys.argv[1])
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from marketdata.demo import ensure_demo_instruments
from trading.models import Strategy
ensure_demo_instruments(dt.date.fromisoformat(sys.argv[2]))
assert Strategy.objects.filter(key="vol_oi").update(enabled=True) == 1
"""


def _wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _pg_url(name: str) -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{name}"


def _pg_admin(sql: str, params: tuple = ()) -> None:
    import psycopg

    with psycopg.connect(_pg_url("postgres"), autocommit=True) as conn:
        conn.execute(sql, params)


# --- the lock ------------------------------------------------------------------------------


@pytest.fixture
def locks(django_db_setup, settings, tmp_path):
    """``engine_lock`` for this test's database (PostgreSQL) or a private VAR_DIR (SQLite)."""
    settings.VAR_DIR = tmp_path
    made = []

    def make(account: str):
        lock = engine_lock(account)
        made.append(lock)
        return lock

    yield make
    for lock in made:
        lock.release()


@pytest.fixture
def holder(django_db_setup, tmp_path):
    """Start a child process holding (or failing to hold) an account's lock."""
    env = {**os.environ, "QUANTHUB_VAR_DIR": str(tmp_path), "LOG_LEVEL": "error"}
    env["DATABASE_URL"] = (
        _pg_url(settings.DATABASES["default"]["NAME"]) if settings.IS_POSTGRES else f"sqlite:///{tmp_path / 'x.db'}"
    )
    procs = []

    def start(*accounts: str) -> tuple[subprocess.Popen, list[str]]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(ROOT), *accounts], env=env, stdout=subprocess.PIPE, text=True
        )
        procs.append(proc)
        return proc, proc.stdout.readline().split()

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(5)
        proc.stdout.close()


def test_the_lock_key_never_changes_between_versions():
    # Old and new engines must contend for the same key during an upgrade.
    assert lock_key("default") == lock_key("default") == 8924586765302151155
    assert lock_key("default") != lock_key("other")
    assert -(2**63) <= lock_key("x") < 2**63


def test_it_chooses_the_lock_for_the_database(locks):
    assert isinstance(locks("default"), PostgresEngineLock if settings.IS_POSTGRES else FileEngineLock)


def test_it_refuses_a_second_holder_in_the_same_process_until_released(locks):
    first, second, other = locks("acct-a"), locks("acct-a"), locks("acct-b")
    assert first.acquire() and first.held
    assert not second.acquire() and not second.held
    assert other.acquire()  # accounts do not block each other
    first.release()
    assert not first.held
    assert second.acquire()
    assert not first.acquire()


def test_it_works_as_a_context_manager(locks):
    with locks("acct-cm") as lock:
        assert lock.held
        assert not locks("acct-cm").acquire()
        with pytest.raises(RuntimeError, match="another engine holds account 'acct-cm'"):
            locks("acct-cm").__enter__()
    assert not lock.held
    assert locks("acct-cm").acquire()


def test_a_blocking_acquire_gives_up_after_its_timeout(locks):
    assert locks("acct-t").acquire()
    started = time.monotonic()
    assert not locks("acct-t").acquire(blocking=True, timeout=0.5, poll_s=0.1)
    assert 0.4 <= time.monotonic() - started < 3


@pytest.mark.slow
def test_another_process_cannot_take_a_held_lock_and_a_killed_holder_frees_it(locks, holder):
    mine = locks("acct-x")
    assert mine.acquire()
    proc, answers = holder("acct-x", "acct-y")
    assert answers == ["refused", "held"]
    theirs = locks("acct-y")
    assert not theirs.acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait(5)
    # PostgreSQL ends the session when the socket closes; the kernel drops a flock at exit.
    assert theirs.acquire(blocking=True, timeout=5, poll_s=0.1)


def test_no_standby_refuses_to_wait_for_a_held_account(locks):
    assert locks("default").acquire()
    with pytest.raises(CommandError, match=r"another engine holds account default .*--no-standby"):
        call_command("run_engine", "--no-standby", "--date", DAY)


@pytest.mark.django_db
def test_a_lost_lock_is_noticed(locks):
    lock = locks("acct-lost")
    assert lock.acquire() and lock.is_alive()
    other = locks("acct-lost")
    if settings.IS_POSTGRES:
        with connection.cursor() as cursor:  # an administrator (or a failover) ends the session
            cursor.execute("SELECT pg_terminate_backend(%s)", [lock._conn.info.backend_pid])
        assert other.acquire()  # and another engine takes the lock before this one can again
    else:
        lock.path.unlink()  # a new engine would lock a new file
    asyncio.run(asyncio.wait_for(lock.watch(interval=0.05), 5))
    assert not lock.held and not lock.is_alive()
    assert other.held or other.acquire()


def test_a_lock_whose_session_ended_with_nobody_else_waiting_is_taken_again(locks, db):
    lock = locks("acct-retake")
    if not settings.IS_POSTGRES:
        pytest.skip("a file lock has no session to lose")
    assert lock.acquire()
    with connection.cursor() as cursor:  # a database restart ends every session
        cursor.execute("SELECT pg_terminate_backend(%s)", [lock._conn.info.backend_pid])

    async def watch_a_while():
        task = asyncio.create_task(lock.watch(interval=0.05))
        await asyncio.sleep(1.0)
        assert not task.done()
        task.cancel()

    asyncio.run(watch_a_while())
    assert lock.held and lock.is_alive()
    assert not locks("acct-retake").acquire()


# --- engines in their own processes -------------------------------------------------------


class EngineDb:
    """A database the engine processes share, read here with plain SQL."""

    def __init__(self, tmp_path: Path, url: str, name: str | None):
        self.tmp_path, self.url, self.name = tmp_path, url, name
        self.env = {**os.environ, "DATABASE_URL": url, "QUANTHUB_VAR_DIR": str(tmp_path), "LOG_LEVEL": "warning"}
        self.env.pop("REDIS_URL", None)  # the in-memory channel layer: nothing shared with other tests
        self.env.pop("QUANTHUB_ACCOUNT", None)
        self.procs: list[subprocess.Popen] = []
        self.labels: dict[int, str] = {}

    def rows(self, sql: str) -> list[tuple]:
        if self.name is None:
            conn = sqlite3.connect(self.url.removeprefix("sqlite:///"), timeout=20)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(sql).fetchall()

    def heartbeat(self, pid: int) -> tuple | None:
        found = self.rows(f"SELECT role, market_time FROM trading_engineheartbeat WHERE pid = {int(pid)}")  # noqa: S608
        return found[0] if found else None

    def role(self, pid: int) -> str | None:
        beat = self.heartbeat(pid)
        return beat[0] if beat else None

    def engine(self, label: str, *args: str) -> subprocess.Popen:
        # Output goes to files: a full pipe would stall the engine.
        with open(self.tmp_path / f"{label}.out", "w") as out, open(self.tmp_path / f"{label}.err", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), "run_engine", "--date", DAY, "--speed", SPEED, *args],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=err,
            )
        self.labels[proc.pid] = label
        self.procs.append(proc)
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        label = self.labels[proc.pid]
        return (self.tmp_path / f"{label}.out").read_text() + (self.tmp_path / f"{label}.err").read_text()

    def lock(self):
        if self.name is None:
            return FileEngineLock("default", self.tmp_path / "locks")
        return PostgresEngineLock("default", {**settings.DATABASES["default"], "NAME": self.name})

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory, django_db_setup):
    """One migrated database with the demo market and the Volume-OI strategy enabled."""
    root = tmp_path_factory.mktemp("engine-template")
    if settings.IS_POSTGRES:
        name = f"qh_englock_tpl_{uuid.uuid4().hex[:8]}"
        _pg_admin(f"CREATE DATABASE {name}")
        url = _pg_url(name)
    else:
        name, url = None, f"sqlite:///{root / 'template.sqlite3'}"
    env = {**os.environ, "DATABASE_URL": url, "QUANTHUB_VAR_DIR": str(root), "LOG_LEVEL": "error"}
    try:
        subprocess.run([sys.executable, "-c", SETUP, str(ROOT), DAY], env=env, check=True, timeout=120)
        yield name or root / "template.sqlite3"
    finally:
        if name:
            _pg_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def engine_db(template_db, tmp_path):
    if settings.IS_POSTGRES:
        name = f"qh_englock_{uuid.uuid4().hex[:8]}"
        _pg_admin(f"CREATE DATABASE {name} TEMPLATE {template_db}")
        db = EngineDb(tmp_path, _pg_url(name), name)
    else:
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{template_db}{suffix}")
            if source.exists():
                shutil.copy(source, tmp_path / f"engine.sqlite3{suffix}")
        db = EngineDb(tmp_path, f"sqlite:///{tmp_path / 'engine.sqlite3'}", None)
    try:
        yield db
    finally:
        db.stop_all()
        if db.name:
            _pg_admin(f"DROP DATABASE IF EXISTS {db.name} WITH (FORCE)")


def _entry_orders(db: EngineDb) -> list[tuple]:
    return db.rows(
        "SELECT s.key, count(*) FROM trading_order o JOIN trading_signal s ON s.id = o.signal_id "
        "WHERE o.purpose = 'ENTRY' GROUP BY s.key"
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_standby_takes_over_within_ten_seconds_of_the_active_engine_dying(engine_db):
    db = engine_db
    # Two engines start together: one takes the account, the other waits.
    first, second = db.engine("first"), db.engine("second")
    _wait_for(
        lambda: {db.role(first.pid), db.role(second.pid)} == {"ACTIVE", "STANDBY"},
        60,
        what="one engine ACTIVE and one STANDBY",
    )
    active, standby = (first, second) if db.role(first.pid) == "ACTIVE" else (second, first)
    assert "standby: another engine holds account default" in db.output(standby)
    assert "standby" not in db.output(active)

    # Let the active engine trade (the 09:16:30 probe), then kill it without warning.
    _wait_for(lambda: _entry_orders(db), 40, what="the active engine's first entry")
    active.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    active.wait(5)
    last_market_time = db.heartbeat(active.pid)[1]

    _wait_for(lambda: db.role(standby.pid) == "ACTIVE", 10, interval=0.1, what="the standby to take over")
    took = time.monotonic() - killed_at
    print(f"standby beat ACTIVE {took:.1f} s after the kill")  # the figure in docs/engine.md (pytest -s)
    assert took < 10
    assert "taking over account default" in db.output(standby)
    assert db.role(active.pid) == "STOPPED"  # the dead engine's row no longer claims the account
    # The simulated session carries on where the dead engine left it (not from 09:15 again).
    assert db.heartbeat(standby.pid)[1] >= last_market_time

    time.sleep(2)  # the new engine trades on for a while
    standby.send_signal(signal.SIGTERM)
    assert standby.wait(20) == 0, db.output(standby)

    client_ids = [r[0] for r in db.rows("SELECT client_order_id FROM trading_order")]
    assert client_ids and len(client_ids) == len(set(client_ids))
    sent = [r[0] for r in db.rows("SELECT correlation_id FROM trading_paperorder")]
    assert len(sent) == len(set(sent)) and set(sent) <= set(client_ids)  # nothing reached the broker twice
    entries = _entry_orders(db)
    assert entries and all(count == 1 for _, count in entries), entries  # no signal entered twice
    lock = db.lock()
    assert lock.acquire()
    lock.release()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_sigterm_stops_the_engine_cleanly_and_frees_the_account(engine_db):
    db = engine_db
    engine = db.engine("engine")
    _wait_for(lambda: db.role(engine.pid) == "ACTIVE", 40, what="the engine to beat ACTIVE")
    [(key, _)] = _wait_for(lambda: _entry_orders(db), 40, what="the engine's first entry")
    engine.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert engine.wait(15) == 0, db.output(engine)
    assert time.monotonic() - started < 10
    assert "Engine finished" in db.output(engine)
    assert db.role(engine.pid) == "STOPPED"
    # The open probe was written to the strategy's state, so a restart resumes it.
    [(state,)] = db.rows("SELECT state FROM trading_strategy WHERE key = 'vol_oi'")
    state = state if isinstance(state, dict) else json.loads(state)
    assert key in state["trades"]
    lock = db.lock()
    assert lock.acquire()
    lock.release()


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_an_engine_that_loses_its_lock_stops_trading_and_exits_with_an_error(engine_db):
    db = engine_db
    engine = db.engine("engine")
    _wait_for(lambda: db.role(engine.pid) == "ACTIVE", 40, what="the engine to beat ACTIVE")
    holder = None
    if db.name:  # the lock's session ends (a failover, an administrator) and another engine takes it
        import psycopg

        holder = psycopg.connect(db.url, autocommit=True)
        _pg_admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (db.name, "quanthub-engine-lock:default"),
        )
        holder.execute("SELECT pg_advisory_lock(%s)", (lock_key("default"),))
    else:
        (db.tmp_path / "locks" / "engine-default.lock").unlink()
    try:
        assert engine.wait(15) == 1, db.output(engine)
    finally:
        if holder is not None:
            holder.close()
    assert "lost the engine lock for account default" in db.output(engine)
    assert db.role(engine.pid) == "STOPPED"
