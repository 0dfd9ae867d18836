from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django_celery_beat.models import PeriodicTask

from audit.chain import append as audit_append
from quanthub import backup as backups_module
from quanthub.backup import BackupError, backups, restore, verify_checksum

MOTO_PORT = 55514


@pytest.fixture(autouse=True)
def _backup_dir(tmp_path, settings):
    settings.QUANTHUB_BACKUP_DIR = str(tmp_path / "backups")
    settings.QUANTHUB_BACKUP_S3_BUCKET = ""


def _audit_records(n=5):
    from django.db import transaction

    for i in range(n):
        with transaction.atomic():
            audit_append("backup.drill", actor="test", subject=f"record-{i}", payload={"i": i})


def _drill(capsys, *args) -> str:
    capsys.readouterr()
    call_command("restore_drill", *args)
    return capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_backup_and_restore_drill_round_trip(capsys):
    _audit_records()
    call_command("backup", "--no-upload")
    out = capsys.readouterr().out
    assert "Backup " in out and "sha256" in out
    (latest,) = backups()
    assert latest.suffix == (".dump" if connection.vendor == "postgresql" else ".sqlite3")
    assert verify_checksum(latest)
    out = _drill(capsys)
    assert "Audit chain: OK, 5 records verified" in out
    assert "Reconciliation dry run: 0 break(s)" in out
    assert "restore_s=" in out


@pytest.mark.django_db(transaction=True)
def test_a_backup_whose_checksum_does_not_match_is_not_restored(capsys):
    call_command("backup", "--no-upload")
    (latest,) = backups()
    with open(latest, "ab") as f:
        f.write(b"corrupt")
    with pytest.raises(CommandError, match="does not match the recorded"):
        call_command("restore_drill")


@pytest.mark.django_db(transaction=True)
def test_the_drill_never_restores_over_the_live_database():
    call_command("backup", "--no-upload")
    (latest,) = backups()
    with pytest.raises(BackupError, match="live database"):
        restore(latest, scratch=connection.settings_dict["NAME"])


@pytest.mark.django_db(transaction=True)
def test_retention_keeps_the_newest(capsys):
    for _ in range(3):
        call_command("backup", "--no-upload", "--keep", "2")
    kept = backups()
    assert len(kept) == 2
    assert all(Path(str(p) + ".sha256").exists() for p in kept)
    assert len(list(kept[0].parent.iterdir())) == 4


@pytest.mark.django_db
def test_restore_drill_says_so_when_there_is_no_backup():
    with pytest.raises(CommandError, match="No backup"):
        call_command("restore_drill")


@pytest.mark.django_db
def test_nightly_backup_is_scheduled():
    task = PeriodicTask.objects.get(task="quanthub.nightly_backup")
    assert task.enabled and task.crontab.hour == "23"


@pytest.mark.django_db(transaction=True)
def test_the_nightly_task_runs_in_process_without_a_broker():
    from quanthub.tasks import nightly_backup

    result = nightly_backup.apply().get()
    assert Path(result["path"]).exists() and result["s3_key"] == ""


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_dump path: DATABASE_URL is not PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_postgres_backup_is_a_custom_format_dump_restored_into_a_scratch_database(capsys):
    _audit_records(3)
    call_command("backup", "--no-upload")
    (latest,) = backups()
    assert latest.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    out = _drill(capsys)
    scratch = f"{connection.settings_dict['NAME']}_restore_drill"
    assert f"into {scratch}" in out and "3 records verified" in out
    subprocess.run(["dropdb", "--if-exists", "--force", scratch], env=backups_module._pg_env(connection.settings_dict))


@pytest.mark.skipif(connection.vendor != "postgresql", reason="pg_dump path: DATABASE_URL is not PostgreSQL")
@pytest.mark.django_db(transaction=True)
def test_postgres_backup_fails_loudly_when_pg_dump_fails(monkeypatch, settings):
    monkeypatch.setitem(connection.settings_dict, "NAME", "qh_no_such_database_anywhere")
    with pytest.raises(CommandError, match="pg_dump failed"):
        call_command("backup", "--no-upload")
    assert backups() == []  # no half-written file under a final name


# --- S3 (moto's server on 127.0.0.1) -------------------------------------------------------


def _wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"moto server did not listen on {port}")


@pytest.fixture
def s3(settings, tmp_path):
    # One server per xdist worker, on ports of our own.
    port = MOTO_PORT + int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        settings.QUANTHUB_BACKUP_S3_BUCKET = "qh-backups"
        settings.QUANTHUB_BACKUP_S3_ENDPOINT = f"http://127.0.0.1:{port}"
        settings.QUANTHUB_BACKUP_S3_ACCESS_KEY = "testing"
        settings.QUANTHUB_BACKUP_S3_SECRET_KEY = "testing"  # noqa: S105 (moto accepts any)
        client = backups_module.s3_client()
        client.create_bucket(Bucket="qh-backups", CreateBucketConfiguration={"LocationConstraint": "ap-south-1"})
        yield client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_backup_uploads_to_s3_and_the_drill_restores_from_it(s3, capsys):
    _audit_records(2)
    for _ in range(3):
        call_command("backup", "--keep", "2")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="qh-backups")["Contents"])
    assert len(keys) == 4  # two backups and their checksums, the oldest pruned
    dump = next(k for k in keys if not k.endswith(".sha256"))
    head = s3.head_object(Bucket="qh-backups", Key=dump)
    local = Path(backups()[-1])
    # Lose the local copies: the drill fetches the newest from the bucket.
    for path in Path(local.parent).iterdir():
        path.unlink()
    out = _drill(capsys)
    assert "Audit chain: OK, 2 records verified" in out
    assert len(head["Metadata"]["sha256"]) == 64


@pytest.mark.django_db(transaction=True)
def test_an_unreachable_bucket_fails_the_backup_but_keeps_the_local_file(settings):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    settings.QUANTHUB_BACKUP_S3_BUCKET = "qh-backups"
    settings.QUANTHUB_BACKUP_S3_ENDPOINT = f"http://127.0.0.1:{port}"
    settings.QUANTHUB_BACKUP_S3_ACCESS_KEY = settings.QUANTHUB_BACKUP_S3_SECRET_KEY = "testing"
    with pytest.raises(CommandError, match="upload to S3 failed"):
        call_command("backup")
    (kept,) = backups()
    assert verify_checksum(kept)
