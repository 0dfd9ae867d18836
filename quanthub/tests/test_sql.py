from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from django.db import transaction

from quanthub.sql import Statement, Update
from risk.models import ChargeRate

pytestmark = pytest.mark.django_db


def _rates():
    ChargeRate.objects.all().delete()
    common = {
        "brokerage_per_order": Decimal("20.00"),
        "sebi_per_crore": Decimal("10.00"),
        "stamp_buy_pct": Decimal("0.00300"),
        "gst_pct": Decimal("18.00"),
    }
    ChargeRate.objects.create(
        instrument_kind="OPTIDX",
        effective_from=dt.date(2024, 10, 1),
        stt_sell_pct=Decimal("0.10000"),
        exchange_txn_pct=Decimal("0.03503"),
        **common,
    )
    ChargeRate.objects.create(
        instrument_kind="OPTIDX",
        effective_from=dt.date(2026, 4, 1),
        stt_sell_pct=Decimal("0.15000"),
        exchange_txn_pct=Decimal("0.03553"),
        **common,
    )


IN_FORCE = Statement(
    lambda kind, on: ChargeRate.objects.filter(instrument_kind=kind, effective_from__lte=on).order_by(
        "-effective_from"
    )[:1],
    str,
    dt.date,
)


def test_each_run_takes_its_own_values_and_rows_come_back_as_the_orm_gives_them():
    _rates()
    for on in (dt.date(2025, 1, 1), dt.date(2026, 11, 24), dt.date(2020, 1, 1)):
        expected = list(
            ChargeRate.objects.filter(instrument_kind="OPTIDX", effective_from__lte=on)
            .order_by("-effective_from")[:1]
            .values_list("id", "instrument_kind", "effective_from", "stt_sell_pct", "exchange_txn_pct")
        )
        got = [
            (r.id, r.instrument_kind, r.effective_from, r.stt_sell_pct, r.exchange_txn_pct)
            for r in IN_FORCE.objects("OPTIDX", on)
        ]
        assert got == expected
    rate = IN_FORCE.objects("OPTIDX", dt.date(2026, 11, 24))[0]
    # Decimals with their places, on SQLite too (it stores these columns as REAL).
    assert type(rate.stt_sell_pct) is Decimal and str(rate.exchange_txn_pct) == "0.03553"
    assert rate._state.adding is False and rate._state.db == "default"
    assert IN_FORCE.objects("FUTIDX", dt.date(2026, 11, 24)) == []


def test_tuples_and_chunks_are_converted_too():
    _rates()
    newest = Statement(
        lambda kind: (
            ChargeRate.objects.filter(instrument_kind=kind)
            .order_by("-effective_from")
            .values_list("effective_from", "gst_pct")
        ),
        str,
    )
    expected = [(dt.date(2026, 4, 1), Decimal("18.00")), (dt.date(2024, 10, 1), Decimal("18.00"))]
    assert newest.rows("OPTIDX") == expected
    assert list(newest.iterate("OPTIDX", chunk_size=1)) == expected
    assert [str(v) for _, v in newest.rows("OPTIDX")] == ["18.00", "18.00"]


def test_a_locking_read_compiles_inside_its_transaction():
    _rates()
    locked = Statement(
        lambda kind: ChargeRate.objects.select_for_update().filter(instrument_kind=kind).order_by("effective_from"),
        str,
    )
    with transaction.atomic():
        assert [r.effective_from for r in locked.objects("OPTIDX")] == [dt.date(2024, 10, 1), dt.date(2026, 4, 1)]


def test_a_query_it_cannot_place_its_values_in_is_refused():
    twice = Statement(lambda kind: ChargeRate.objects.filter(instrument_kind=kind, source=kind), str)
    with pytest.raises(ValueError, match="appears 2 times"):
        twice.rows("OPTIDX")
    joined = Statement(lambda kind: ChargeRate.objects.filter(instrument_kind=kind).values_list("id"), str)
    with pytest.raises(TypeError):
        joined.objects("OPTIDX")


def test_an_update_writes_its_fields_adapted_as_the_orm_adapts_them():
    _rates()
    rate = ChargeRate.objects.get(effective_from=dt.date(2026, 4, 1))
    change = Update(ChargeRate, ("stt_sell_pct", "source"), where={"pk": int, "instrument_kind": str})
    assert change.run((Decimal("0.12345"), "circular"), (rate.pk, "FUTIDX")) == 0
    assert change.run((Decimal("0.12345"), "circular"), (rate.pk, "OPTIDX")) == 1
    rate.refresh_from_db()
    assert (rate.stt_sell_pct, rate.source) == (Decimal("0.12345"), "circular")
    assert ChargeRate.objects.get(effective_from=dt.date(2024, 10, 1)).source == ""
