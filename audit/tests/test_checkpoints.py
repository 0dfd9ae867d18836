"""What a database superuser can do to the chain's tail, and how it is caught:
the chain head's MAC, the signed checkpoints outside the database, and the
parallel verification's seams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from audit import checkpoints
from audit.chain import append, compute_hash, record_body
from audit.models import AuditChainHead, AuditRecord
from audit.tests.test_chain import KEY, _rows
from audit.verify import _link, verify, verify_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def chain(db, settings, django_capture_on_commit_callbacks):
    """Twelve records with a checkpoint every five (after commit, as in production)."""
    settings.AUDIT_CHECKPOINT_EVERY = 5
    settings.AUDIT_CHECKPOINT_TO_SINKS = False
    heads = {}
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(12):
            append("order.intent", actor="engine", subject=f"order:{i}", payload={"i": i})
            heads[i + 1] = AuditChainHead.objects.values_list("seq", "hash", "mac").get(id=1)
    return heads


def _superuser(statements: list[tuple[str, list]]) -> None:
    """What a database superuser can do: on PostgreSQL, switch the append-only
    trigger off first (the test database's owner is a superuser)."""
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if postgres:
            cursor.execute("ALTER TABLE audit_auditrecord DISABLE TRIGGER audit_append_only")
        for sql, params in statements:
            cursor.execute(sql, params)
        if postgres:
            cursor.execute("ALTER TABLE audit_auditrecord ENABLE TRIGGER audit_append_only")


def test_checkpoints_are_signed_lines_outside_the_database(chain, settings):
    lines = (settings.AUDIT_CHECKPOINT_DIR / checkpoints.FILENAME).read_text().splitlines()
    written = [json.loads(line) for line in lines]
    assert [c["seq"] for c in written] == [5, 10]
    assert written[1]["hash"] == AuditRecord.objects.get(seq=10).hash
    assert all(len(c["mac"]) == 64 and c["reason"] == "every" for c in written)
    result = verify()
    assert result.ok and result.verified == 12 and result.checkpoint_seq == 10


def test_truncating_the_tail_with_a_replayed_head_is_caught_by_the_checkpoint(chain, capsys):
    # The strongest superuser: deletes #8-#12 and puts back the head row as it
    # was after #7 (kept from an earlier look), MAC and all.
    seq, head_hash, mac = chain[7]
    _superuser(
        [
            ("DELETE FROM audit_auditrecord WHERE seq > %s", [7]),
            ("UPDATE audit_auditchainhead SET seq = %s, hash = %s, mac = %s", [seq, head_hash, mac]),
        ]
    )
    result = verify()
    assert not result.ok and result.broken_seq == 8
    assert "vouches for record #10" in result.problem and "newest records were removed" in result.problem
    with pytest.raises(SystemExit) as exit_info:
        call_command("verify_audit")
    assert exit_info.value.code == 1
    assert "BROKEN at sequence 8" in capsys.readouterr().err


def test_a_head_moved_back_without_the_key_is_caught_by_its_mac(chain):
    # Between checkpoints (#11, #12 deleted; the last checkpoint is #10) only the
    # head's MAC tells: the record's own MAC does not fit the head.
    record = AuditRecord.objects.get(seq=10)
    _superuser(
        [
            ("DELETE FROM audit_auditrecord WHERE seq > %s", [10]),
            ("UPDATE audit_auditchainhead SET seq = %s, hash = %s, mac = %s", [10, record.hash, record.mac]),
        ]
    )
    result = verify()
    assert not result.ok and "chain head's MAC does not match" in result.problem


def test_a_forged_head_with_no_records_behind_it_is_caught(chain):
    _superuser([("UPDATE audit_auditchainhead SET hash = %s", ["f" * 64])])
    result = verify()
    assert not result.ok and result.problem == "the chain head's hash is not the last record's"


def test_a_forged_checkpoint_is_refused_with_a_clear_message(chain, settings, capsys):
    path = settings.AUDIT_CHECKPOINT_DIR / checkpoints.FILENAME
    lines = path.read_text().splitlines()
    # Hide a truncation by rewriting the latest checkpoint to an earlier record.
    forged = json.loads(lines[-1])
    forged.update(seq=7, hash=AuditRecord.objects.get(seq=7).hash)
    path.write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n")
    with pytest.raises(checkpoints.CheckpointError, match="line 2 .*not signed by the audit key"):
        verify()
    with pytest.raises(SystemExit) as exit_info:
        call_command("verify_audit")
    assert exit_info.value.code == 2
    assert "a forged checkpoint" in capsys.readouterr().err


def test_a_corrupted_checkpoint_line_is_refused(chain, settings):
    path = settings.AUDIT_CHECKPOINT_DIR / checkpoints.FILENAME
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(checkpoints.CheckpointError, match="line 3 is not a checkpoint"):
        verify()


def test_a_missing_checkpoint_directory_is_a_clear_error(chain, settings, tmp_path, capsys):
    settings.AUDIT_CHECKPOINT_DIR = tmp_path / "gone"
    with pytest.raises(SystemExit) as exit_info:
        call_command("verify_audit")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"the audit checkpoint directory {tmp_path / 'gone'} does not exist" in err
    assert "AUDIT_CHECKPOINT_DIR" in err


def test_a_removed_checkpoint_file_is_caught_once_the_chain_passed_the_first(chain, settings):
    (settings.AUDIT_CHECKPOINT_DIR / checkpoints.FILENAME).unlink()
    result = verify()
    assert not result.ok and "no checkpoint on file" in result.problem


def test_a_young_chain_without_a_checkpoint_yet_verifies(db, settings):
    settings.AUDIT_CHECKPOINT_EVERY = 1000
    for i in range(3):
        append("x", payload={"i": i})
    assert verify().ok


def test_a_checkpoint_of_a_record_that_was_swapped_is_caught(chain, settings):
    # A superuser rebuilds #10 onwards with recomputed hashes (no key: the MACs
    # will not fit either, but the checkpoint names the exact record).
    _superuser([("UPDATE audit_auditrecord SET hash = %s WHERE seq = 10", ["e" * 64])])
    result = verify()
    assert not result.ok and result.broken_seq == 10


def test_the_close_checkpoint_records_the_head(chain, settings):
    written = checkpoints.write_head(reason="close")
    assert written.seq == 12 and written.reason == "close"
    assert checkpoints.latest().seq == 12
    assert call_command("audit_checkpoint") is None
    assert checkpoints.latest().reason == "manual"


def test_a_checkpoint_that_cannot_be_written_is_logged_not_raised(settings, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings.AUDIT_CHECKPOINT_DIR = blocker / "sub"  # a file in the way: mkdir fails
    assert checkpoints.write(1, "a" * 64, reason="every") is None
    assert "audit checkpoint not written" in caplog.text


# --- Parallel verification ---------------------------------------------------------


def _ranges(rows: list, cuts: list[int]) -> list:
    """What the workers return for ranges cut at these sequence numbers."""
    bounds = [1, *sorted(set(cuts)), len(rows) + 10]
    parts = []
    for low, high in zip(bounds, bounds[1:], strict=False):
        share = [row for row in rows if low <= row[0] < high]
        if not share:
            parts.append((None, verify_rows([], key=KEY)))
            continue
        parts.append((share[0][6], verify_rows(share, key=KEY, prev_hash=share[0][6], prev_seq=share[0][0] - 1)))
    return parts


@hsettings(max_examples=150, deadline=None)
@given(n=st.integers(4, 30), data=st.data())
def test_linking_ranges_finds_the_same_first_break_as_one_walk(n, data):
    rows = _rows(n)
    kind = data.draw(st.sampled_from(["none", "edit", "delete", "delete_run", "forge", "relink"]))
    k = data.draw(st.integers(0, n - 2))
    if kind == "edit":
        rows[k][5] = {"qty": -1}
    elif kind == "delete":
        del rows[k]
    elif kind == "delete_run":
        del rows[k : k + data.draw(st.integers(1, 4))]
    elif kind == "forge":
        rows[k][5] = {"qty": 0}
        rows[k][7] = compute_hash(rows[k][6], record_body(*rows[k][:6]))
    elif kind == "relink":
        rows[k + 1][6] = "d" * 64
    cuts = data.draw(st.lists(st.integers(2, n), max_size=4))
    linked = _link(_ranges(rows, cuts), "0" * 64, 0)
    walked = verify_rows(rows, key=KEY)
    assert (linked.ok, linked.broken_seq, linked.verified) == (walked.ok, walked.broken_seq, walked.verified)
    if walked.ok:
        assert (linked.last_seq, linked.last_hash) == (walked.last_seq, walked.last_hash)


_SCRIPT = """
import io, json, sys, django
django.setup()
from django.core.management import call_command
from django.db import connection, transaction
call_command("migrate", verbosity=0)
from audit.chain import append

def run(*args):
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command("verify_audit", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return [code, out.getvalue(), err.getvalue()]

results = {}
for step in json.loads(sys.argv[1]):
    if step[0] == "append":
        with transaction.atomic():
            for i in range(step[1]):
                append("order.intent", actor="engine", subject=f"order:{i}", payload={"i": i, "price": "101.05"})
    elif step[0] == "sql":
        with connection.cursor() as cursor:
            cursor.execute(step[1])
    else:
        results[step[1]] = run("--workers", str(step[2]))
print(json.dumps(results))
"""


def _in_a_process(tmp_path: Path, steps: list) -> dict:
    """Run the steps in a process of their own on a SQLite file (the test
    database is in memory, which forked workers cannot share)."""
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/audit.sqlite3",
        "QUANTHUB_VAR_DIR": str(tmp_path),
        "AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "AUDIT_CHECKPOINT_TO_SINKS": "false",
        "AUDIT_HMAC_KEY": "parallel-test-key",
        "AUDIT_VERIFY_PARALLEL_MIN": "10",
        "DJANGO_SETTINGS_MODULE": "quanthub.settings",
        "LOG_LEVEL": "error",
    }
    env.pop("REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(steps)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_command_verifies_in_parallel_and_finds_breaks_at_a_seam_and_inside_a_range(tmp_path):
    results = _in_a_process(
        tmp_path,
        [
            ["append", 300],
            ["verify", "whole", 3],
            # Three workers take #1-#100, #101-#200, #201-#300: #101 starts a range.
            ["sql", "DELETE FROM audit_auditrecord WHERE seq = 101"],
            ["verify", "seam", 3],
            ["sql", """UPDATE audit_auditrecord SET payload = '{"i":7}' WHERE seq = 70"""],
            ["verify", "edit_one", 1],
            ["verify", "edit_two", 2],
        ],
    )
    code, out, _ = results["whole"]
    assert code == 0 and "OK: 300 audit records verified (#1–#300)" in out
    code, _, err = results["seam"]
    assert code == 1
    assert "BROKEN at sequence 102: sequence 102 follows 100: missing record(s) before it" in err
    assert "(100 records verified before it)" in err
    assert results["edit_one"] == results["edit_two"]
    code, _, err = results["edit_one"]
    assert code == 1 and "BROKEN at sequence 70: content does not match its hash (edited) (69 records" in err


def test_the_fast_path_and_the_parsed_path_agree(db):
    record = append("x", payload={"b": 1, "a": "₹ 1.05"})
    fields = AuditRecord.objects.filter(pk=record.pk).values_list(
        "seq", "created_at", "actor", "action", "subject", "payload", "prev_hash", "hash", "mac"
    )
    typed = list(fields.get())
    key = django_settings.AUDIT_HMAC_KEY
    assert verify_rows([typed], key=key).ok
    text = list(typed)
    text[1] = typed[1].replace(tzinfo=None).isoformat(sep=" ")
    text[5] = json.dumps(typed[5], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert verify_rows([text], key=key).ok
    text[5] = json.dumps(typed[5])  # stored in another but equal form: the parsed path accepts it
    assert verify_rows([text], key=key).ok
    text[5] = json.dumps({**typed[5], "b": 2})
    assert verify_rows([text], key=key).problem == "content does not match its hash (edited)"


def test_the_close_task_checkpoints_the_chain_and_is_scheduled_after_the_close(chain, settings):
    from django_celery_beat.models import PeriodicTask

    from audit.tasks import checkpoint_close

    assert checkpoint_close() == {"seq": 12, "hash": AuditRecord.objects.get(seq=12).hash}
    last = json.loads((settings.AUDIT_CHECKPOINT_DIR / checkpoints.FILENAME).read_text().splitlines()[-1])
    assert (last["seq"], last["reason"]) == (12, "close")
    task = PeriodicTask.objects.get(task="audit.checkpoint_close")
    assert task.enabled and (task.crontab.hour, task.crontab.minute, task.crontab.day_of_week) == ("15", "35", "1-5")
