from __future__ import annotations

import pytest

from audit.chain import append
from audit.models import AuditImmutableError, AuditRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def record():
    return append("order.intent", actor="engine", subject="order:QH1", payload={"qty": 130})


def test_it_refuses_to_update_a_record(record):
    record.payload = {"qty": 1}
    with pytest.raises(AuditImmutableError):
        record.save()


def test_it_refuses_to_delete_a_record(record):
    with pytest.raises(AuditImmutableError):
        record.delete()


def test_it_refuses_queryset_update_and_delete(record):
    with pytest.raises(AuditImmutableError):
        AuditRecord.objects.filter(pk=record.pk).update(actor="someone else")
    with pytest.raises(AuditImmutableError):
        AuditRecord.objects.all().delete()
    with pytest.raises(AuditImmutableError):
        AuditRecord.objects.bulk_update([record], ["actor"])
    assert AuditRecord.objects.get(pk=record.pk).actor == "engine"


def test_records_chain_one_to_the_next():
    first = append("a", payload={"n": 1})
    second = append("b", payload={"n": 2})
    assert second.seq == first.seq + 1
    assert second.prev_hash == first.hash
    assert len(second.mac) == 64
