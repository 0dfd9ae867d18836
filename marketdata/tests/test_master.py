from __future__ import annotations

import csv
import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command

from marketdata import synthetic
from marketdata.master import MasterError, load
from marketdata.models import Instrument, Underlying

pytestmark = pytest.mark.django_db
DAY = dt.date(2026, 11, 24)  # a Tuesday: a NIFTY weekly and the November monthly expiry


@pytest.fixture
def master_file(tmp_path):
    path = tmp_path / "master.csv"
    synthetic.write_master(path, DAY)
    return path


def _rows(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _write(path, rows, columns=None):
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_it_loads_the_synthetic_market_with_nse_facts_as_data(master_file):
    load(master_file)
    nifty = Underlying.objects.get(symbol="NIFTY")
    bank = Underlying.objects.get(symbol="BANKNIFTY")
    assert nifty.strike_step == 50 and bank.strike_step == 100
    assert nifty.expiry_rule == Underlying.ExpiryRule.WEEKLY_AND_MONTHLY
    assert bank.expiry_rule == Underlying.ExpiryRule.MONTHLY
    option = Instrument.objects.filter(underlying=nifty, kind="CE").first()
    assert (option.lot_size, option.freeze_quantity, option.tick_size) == (65, 1800, Decimal("0.05"))
    bank_option = Instrument.objects.filter(underlying=bank, kind="PE").first()
    assert (bank_option.lot_size, bank_option.freeze_quantity) == (30, 600)
    assert all(d.weekday() == 1 for d in Instrument.objects.exclude(expiry=None).values_list("expiry", flat=True))


def test_loading_twice_changes_nothing(master_file):
    first = load(master_file)
    second = load(master_file)
    assert first.created > 0
    assert (second.created, second.updated, second.deactivated) == (0, 0, 0)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("SEM_STRIKE_PRICE", "abc", "expected a positive strike"),
        ("SEM_LOT_UNITS", "-65", "expected a positive whole lot size"),
        ("SEM_EXPIRY_DATE", "24/11/2026", "expected YYYY-MM-DD"),
        ("SEM_OPTION_TYPE", "XX", "expected CE or PE"),
        ("SEM_SMST_SECURITY_ID", "ABC", "numeric security id"),
        ("SEM_TICK_SIZE", "0", "positive tick size"),
    ],
)
def test_a_malformed_file_is_refused_with_row_and_column_and_nothing_loaded(
    tmp_path, master_file, column, value, message
):
    rows = _rows(master_file)
    bad_index = next(i for i, row in enumerate(rows) if row["SEM_INSTRUMENT_NAME"] == "OPTIDX") + 5
    rows[bad_index][column] = value
    bad = tmp_path / "bad.csv"
    _write(bad, rows)
    with pytest.raises(MasterError) as excinfo:
        load(bad)
    assert excinfo.value.problems[0][:2] == (bad_index + 2, column)  # +1 header, +1 one-based
    assert message in str(excinfo.value)
    assert Instrument.objects.count() == 0 and Underlying.objects.count() == 0


def test_a_missing_column_is_refused(tmp_path, master_file):
    rows = _rows(master_file)
    columns = [c for c in rows[0] if c != "SEM_LOT_UNITS"]
    bad = tmp_path / "bad.csv"
    _write(bad, [{c: r[c] for c in columns} for r in rows], columns)
    with pytest.raises(MasterError, match="row 1, column SEM_LOT_UNITS: missing from the header"):
        load(bad)


def test_dhans_file_needs_freeze_quantities_from_the_operator(tmp_path, master_file):
    rows = [{k: v for k, v in row.items() if k != "QH_FREEZE_QTY"} for row in _rows(master_file)]
    dhan = tmp_path / "dhan.csv"
    _write(dhan, rows)
    with pytest.raises(MasterError, match="no freeze quantity"):
        load(dhan)
    load(dhan, freeze={"NIFTY": 1800, "BANKNIFTY": 600})
    assert Instrument.objects.filter(kind="CE", underlying__symbol="BANKNIFTY").first().freeze_quantity == 600


def test_an_expiry_on_a_holiday_moves_to_the_previous_trading_day():
    spec = synthetic.SYNTHETIC_MARKET["BANKNIFTY"]
    holiday = dt.date(2026, 12, 29)  # the December monthly (last Tuesday)
    listed = synthetic.expiries(spec, DAY, holidays={holiday})
    assert holiday not in listed
    assert dt.date(2026, 12, 28) in listed


def test_the_command_reports_counts_and_refuses_bad_files(tmp_path, master_file, capsys):
    call_command("load_instruments", str(master_file))
    assert "created" in capsys.readouterr().out
    with pytest.raises(CommandError, match="cannot read"):
        call_command("load_instruments", str(tmp_path / "missing.csv"))
    with pytest.raises(CommandError, match="--freeze takes SYMBOL=QUANTITY"):
        call_command("load_instruments", str(master_file), "--freeze", "NIFTY=lots")


def test_expired_instruments_are_deactivated_on_the_next_load(tmp_path):
    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    synthetic.write_master(old, DAY)
    synthetic.write_master(new, DAY + dt.timedelta(days=1))
    load(old)
    result = load(new)
    assert result.deactivated > 0
    assert not Instrument.objects.filter(expiry=DAY, is_active=True).exists()
