from __future__ import annotations

import datetime as dt
import json

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from django.urls import reverse
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.chain import GENESIS, append, compute_hash, compute_head_mac, compute_mac, record_body
from audit.models import AuditRecord
from audit.verify import FIELDS, verify, verify_rows

KEY = "test-audit-key"


def _rows(n: int) -> list[list]:
    """A valid chain of n records, as verify_rows reads them (no database)."""
    from audit.chain import compute_mac

    rows, prev = [], GENESIS
    start = dt.datetime(2026, 11, 24, 4, 0, tzinfo=dt.UTC)
    for seq in range(1, n + 1):
        created = start + dt.timedelta(seconds=seq)
        payload = {"qty": seq * 65, "price": f"{100 + seq}.05"}
        record_hash = compute_hash(prev, record_body(seq, created, "engine", "order.intent", f"order:{seq}", payload))
        rows.append(
            [
                seq,
                created,
                "engine",
                "order.intent",
                f"order:{seq}",
                payload,
                prev,
                record_hash,
                compute_mac(record_hash, KEY),
            ]
        )
        prev = record_hash
    return rows


def test_an_intact_chain_verifies():
    assert verify_rows(_rows(20), key=KEY).verified == 20


@settings(max_examples=150)
@given(n=st.integers(3, 25), data=st.data())
def test_every_kind_of_tampering_is_caught_at_the_right_sequence(n, data):
    rows = _rows(n)
    kind = data.draw(st.sampled_from(["edit_payload", "edit_actor", "delete", "insert", "reorder", "forge"]))
    k = data.draw(st.integers(0, n - 2))  # not the last: truncation is the chain head's job (tested below)
    expected = rows[k][0]
    if kind == "edit_payload":
        rows[k][5] = {**rows[k][5], "qty": rows[k][5]["qty"] + 1}
    elif kind == "edit_actor":
        rows[k][2] = "someone else"
    elif kind == "delete":
        del rows[k]
        expected = rows[k][0]  # the record after the gap reports it
    elif kind == "insert":
        forged = list(rows[k])
        forged[5] = {"qty": 1}
        rows.insert(k + 1, forged)
        expected = rows[k][0]  # a second record with the same sequence
    elif kind == "reorder":
        rows[k], rows[k + 1] = rows[k + 1], rows[k]
        expected = rows[k][0]
    elif kind == "forge":
        # An attacker recomputes the hashes but has no key for the MAC.
        rows[k][5] = {"qty": 0}
        rows[k][7] = compute_hash(rows[k][6], record_body(*rows[k][:6]))
        for later in range(k + 1, n):
            rows[later][6] = rows[later - 1][7]
            rows[later][7] = compute_hash(rows[later][6], record_body(*rows[later][:6]))
    result = verify_rows(rows, key=KEY)
    assert not result.ok
    assert result.broken_seq == expected, (kind, result)


@pytest.mark.django_db
def test_verify_walks_the_database_and_the_command_exits_1_on_a_break(capsys):
    for i in range(5):
        append("order.intent", actor="engine", subject=f"order:{i}", payload={"i": i})
    assert verify().verified == 5
    call_command("verify_audit")
    assert "OK: 5 audit records verified" in capsys.readouterr().out
    if connection.vendor != "sqlite":
        pytest.skip("raw tampering below needs SQLite; PostgreSQL refuses it (next test)")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditrecord SET payload = %s WHERE seq = 3", [json.dumps({"i": 99})])
    with pytest.raises(SystemExit) as excinfo:
        call_command("verify_audit")
    assert excinfo.value.code == 1
    assert "BROKEN at sequence 3: content does not match its hash" in capsys.readouterr().err


@pytest.mark.django_db
def test_truncating_the_tail_is_caught_by_the_chain_head():
    for i in range(4):
        append("x", payload={"i": i})
    if connection.vendor != "sqlite":
        pytest.skip("raw deletion needs SQLite")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditrecord WHERE seq = 4")
    result = verify()
    assert not result.ok and result.broken_seq == 4


@pytest.mark.django_db
def test_postgresql_refuses_update_and_delete_even_in_raw_sql():
    if connection.vendor != "postgresql":
        pytest.skip("the trigger exists on PostgreSQL; SQLite relies on the ORM's refusal")
    append("x", payload={})
    for statement in ("UPDATE audit_auditrecord SET actor = 'evil'", "DELETE FROM audit_auditrecord"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    assert AuditRecord.objects.get().actor == "system"


@pytest.mark.django_db
def test_an_appended_record_rolls_back_with_what_it_records():
    append("before", payload={})
    with pytest.raises(RuntimeError), transaction.atomic():
        append("decision", payload={"lots": 2})
        raise RuntimeError("the decision failed")
    append("after", payload={})
    assert list(AuditRecord.objects.values_list("action", flat=True)) == ["before", "after"]
    assert verify().ok


@pytest.mark.django_db
def test_a_range_is_verified_linked_to_the_record_before_it():
    day1 = dt.datetime(2026, 11, 23, 10, tzinfo=dt.UTC)
    day2 = dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC)
    for i in range(3):
        append("a", payload={"i": i}, at=day1 + dt.timedelta(minutes=i))
    for i in range(2):
        append("b", payload={"i": i}, at=day2 + dt.timedelta(minutes=i))
    result = verify(dt.date(2026, 11, 24), dt.date(2026, 11, 24))
    assert result.ok and (result.verified, result.first_seq, result.last_seq) == (2, 4, 5)


@pytest.mark.django_db
def test_an_export_verifies_offline(tmp_path, capsys):
    day = dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC)
    for i in range(3):
        append("order.intent", payload={"price": "100.05", "i": i}, at=day + dt.timedelta(seconds=i))
    for fmt in ("csv", "jsonl"):
        path = tmp_path / f"audit.{fmt}"
        call_command(
            "export_audit", "--from", "2026-11-24", "--to", "2026-11-24", "--format", fmt, "--output", str(path)
        )
        call_command("verify_audit", "--file", str(path))
        assert "OK: 3 audit records verified" in capsys.readouterr().out
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert set(json.loads(lines[0])) == set(FIELDS)


@pytest.mark.django_db
def test_the_compliance_page_verifies_and_downloads(client, compliance_user, trader):
    day = dt.datetime(2026, 11, 24, 10, tzinfo=dt.UTC)
    append("risk_limits.changed", actor="risk1", payload={"x": 1}, at=day)
    client.force_login(compliance_user)
    page = client.get(reverse("audit:compliance"), {"from": "2026-11-24", "to": "2026-11-24"})
    assert page.status_code == 200 and "Verified: 1 record" in page.content.decode()
    download = client.get(reverse("audit:export"), {"from": "2026-11-24", "to": "2026-11-24", "format": "csv"})
    assert download.status_code == 200
    body = b"".join(download.streaming_content).decode()
    assert body.startswith("seq,created_at") and "risk_limits.changed" in body
    assert client.get(reverse("audit:compliance"), {"from": "24/11/2026"}).status_code == 400
    client.force_login(trader)
    assert client.get(reverse("audit:compliance")).status_code == 403
    assert client.get(reverse("audit:export")).status_code == 403


@pytest.mark.django_db
def test_an_append_reads_the_chain_head_only_when_another_writer_moved_it():
    if connection.vendor != "sqlite":
        pytest.skip("counts the statements SQLite's driver runs")
    append("first", payload={})
    statements: list[str] = []
    connection.connection.set_trace_callback(statements.append)
    try:
        append("second", payload={"i": 2})
        assert [s.split()[0] for s in statements] == ["UPDATE", "INSERT"]
        # Another writer moves the head (a record appended elsewhere): the guess
        # matches no row, so the head is read and the chain continues from it.
        with connection.cursor() as cursor:
            cursor.execute("SELECT seq, hash FROM audit_auditchainhead WHERE id = 1")
            seq, prev = cursor.fetchone()
            body = record_body(seq + 1, dt.datetime(2026, 11, 24, 4, tzinfo=dt.UTC), "web", "other", "", {})
            other = compute_hash(prev, body)
            cursor.execute(
                "INSERT INTO audit_auditrecord (seq, created_at, actor, action, subject, payload, prev_hash, hash, mac)"
                " VALUES (%s, '2026-11-24 04:00:00', 'web', 'other', '', '{}', %s, %s, %s)",
                [seq + 1, prev, other, compute_mac(other)],
            )
            cursor.execute(
                "UPDATE audit_auditchainhead SET seq = %s, hash = %s, mac = %s WHERE id = 1",
                [seq + 1, other, compute_head_mac(seq + 1, other)],
            )
        statements.clear()
        third = append("third", payload={})
        assert [s.split()[0] for s in statements] == ["UPDATE", "SELECT", "UPDATE", "INSERT"]
    finally:
        connection.connection.set_trace_callback(None)
    assert (third.seq, third.prev_hash) == (4, other)
    assert list(AuditRecord.objects.values_list("action", flat=True)) == ["first", "second", "other", "third"]
    assert verify().ok


@pytest.mark.django_db
def test_a_rolled_back_append_leaves_no_gap_in_the_chain():
    append("before", payload={})
    for _ in range(2):  # twice: the second append after a rollback must not build on the first's guess either
        with pytest.raises(RuntimeError), transaction.atomic():
            append("decision", payload={"lots": 2})
            append("decision", payload={"lots": 3})
            raise RuntimeError("the decision failed")
    with transaction.atomic():
        sid = transaction.savepoint()
        append("inner", payload={})
        transaction.savepoint_rollback(sid)
        after = append("after", payload={})
    assert after.seq == 2
    assert list(AuditRecord.objects.values_list("seq", "action")) == [(1, "before"), (2, "after")]
    assert verify().ok


@pytest.mark.django_db(transaction=True)
def test_appenders_on_two_connections_share_one_chain():
    """Two threads, each with its own connection, alternate appends: each one's
    guess of the head is stale every time, and the chain stays whole."""
    import threading

    from django.db import connections

    turns = [threading.Event(), threading.Event()]
    turns[0].set()

    def writer(me: int) -> None:
        try:
            for i in range(5):
                turns[me].wait(10)
                turns[me].clear()
                append("turn", actor=f"writer{me}", payload={"i": i})
                turns[1 - me].set()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    actors = list(AuditRecord.objects.values_list("actor", flat=True))
    assert actors == ["writer0", "writer1"] * 5
    assert verify().ok
