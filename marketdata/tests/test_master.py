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


def test_the_index_tick_written_in_rupees_loads_as_five_paise(master_file, tmp_path):
    rows = _rows(master_file)
    index_rows = [r for r in rows if r["SEM_INSTRUMENT_NAME"] == "INDEX"]
    for row in index_rows:
        row["SEM_TICK_SIZE"] = "0.0500"  # Dhan's index rows: rupees, not paise
    for row in rows:
        if row["SEM_INSTRUMENT_NAME"] == "OPTIDX":
            row["SEM_TICK_SIZE"] = "5.0000"  # derivatives: paise
    path = tmp_path / "rupees.csv"
    _write(path, rows)
    load(path)
    assert index_rows, "the synthetic master has index rows"
    assert set(Instrument.objects.filter(kind="INDEX").values_list("tick_size", flat=True)) == {Decimal("0.05")}
    assert set(Instrument.objects.filter(kind="CE").values_list("tick_size", flat=True)) == {Decimal("0.05")}


def test_weekly_and_monthly_contracts_of_one_strike_have_different_names(master_file):
    load(master_file)
    options = list(Instrument.objects.filter(kind__in=["CE", "PE"]).select_related("underlying"))
    names = [o.display for o in options]
    assert len(set(names)) == len(names)  # unique everywhere a trader sees them
    one = options[0]
    assert str(one) == one.display
    expected = f"{one.underlying.symbol} {one.expiry:%d %b %y} {one.strike.normalize():f} {one.kind}"
    assert one.display == expected


def test_a_weekly_and_a_monthly_sharing_dhans_symbol_are_told_apart(master_file, tmp_path):
    rows = _rows(master_file)
    nifty_ce = [
        r
        for r in rows
        if r["SEM_INSTRUMENT_NAME"] == "OPTIDX"
        and r["SEM_TRADING_SYMBOL"].startswith("NIFTY")
        and r["SEM_OPTION_TYPE"] == "CE"
    ]
    expiries = sorted({r["SEM_EXPIRY_DATE"][:10] for r in nifty_ce})
    assert len(expiries) >= 2
    strike = nifty_ce[0]["SEM_STRIKE_PRICE"]
    pair = [
        next(r for r in nifty_ce if r["SEM_EXPIRY_DATE"][:10] == e and r["SEM_STRIKE_PRICE"] == strike)
        for e in expiries[:2]
    ]
    for row in pair:
        row["SEM_TRADING_SYMBOL"] = "NIFTY-Dec2026-24000-CE"  # Dhan names both the same
    path = tmp_path / "same-name.csv"
    _write(path, rows)
    load(path)
    twins = list(Instrument.objects.filter(trading_symbol="NIFTY-Dec2026-24000-CE").select_related("underlying"))
    assert len(twins) == 2 and twins[0].display != twins[1].display
    assert all(t.expiry.strftime("%d %b %y") in t.display for t in twins)


def test_display_names_read_like_a_dealing_screen():
    from marketdata.master import display_name

    assert display_name("NIFTY", "CE", dt.date(2026, 12, 8), Decimal("24000.00")) == "NIFTY 08 Dec 26 24000 CE"
    assert display_name("NIFTY", "CE", dt.date(2026, 12, 29), Decimal("24000.00")) == "NIFTY 29 Dec 26 24000 CE"
    assert display_name("BANKNIFTY", "FUT", dt.date(2026, 12, 29), None) == "BANKNIFTY 29 Dec 26 FUT"
    assert display_name("NIFTY", "INDEX", None, None) == "NIFTY"
    assert display_name("NIFTY", "PE", dt.date(2026, 12, 8), Decimal("24012.50")) == "NIFTY 08 Dec 26 24012.5 PE"


def test_loading_records_when_for_the_preflight(master_file, settings, tmp_path):
    from marketdata.master import last_loaded_at

    settings.VAR_DIR = tmp_path
    assert last_loaded_at() is None
    load(master_file)
    assert last_loaded_at() is not None
