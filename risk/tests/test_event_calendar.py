"""The shipped event calendar, load_event_days, and the risk panel's event-day line."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditRecord
from risk.calendars import CALENDAR_2026_2027
from risk.models import EventDay


@pytest.mark.event_calendar
@pytest.mark.django_db
def test_the_migration_ships_2026_and_2027_with_a_source_for_every_day():
    days = EventDay.objects.all()
    assert days.count() == len(CALENDAR_2026_2027) >= 40
    kinds = set(days.values_list("kind", flat=True))
    assert kinds == {"RBI_POLICY", "BUDGET", "US_CPI", "NSE_HOLIDAY"}
    assert not days.filter(source="").exists()
    assert EventDay.objects.get(date=dt.date(2026, 2, 1), kind="BUDGET").action == "NO_NEW_ENTRIES"
    assert EventDay.objects.get(date=dt.date(2026, 11, 24), kind="NSE_HOLIDAY").action == "HALT"
    assert EventDay.objects.filter(date__year=2027, provisional=False).count() == 0
    for year in (2026, 2027):
        assert days.filter(date__year=year, kind="US_CPI").count() == 12
        assert days.filter(date__year=year, kind="RBI_POLICY").count() >= 5
    assert all(d.weekday() < 5 for d in days.filter(kind="NSE_HOLIDAY").values_list("date", flat=True))


@pytest.mark.django_db
def test_load_event_days_adds_and_updates_from_csv_and_audits(tmp_path):
    path = tmp_path / "2028.csv"
    path.write_text(
        "date,kind,action,note,source,provisional\n"
        "2028-02-01,BUDGET,,Union Budget 2028-29,Ministry of Finance,yes\n"
        "2028-01-26,NSE_HOLIDAY,,Republic Day,NSE circular 2028,\n"
    )
    call_command("load_event_days", str(path))
    budget = EventDay.objects.get(date=dt.date(2028, 2, 1))
    assert (budget.kind, budget.action, budget.provisional) == ("BUDGET", "NO_NEW_ENTRIES", True)
    assert EventDay.objects.get(date=dt.date(2028, 1, 26)).action == "HALT"
    path.write_text("date,kind,action\n2028-02-01,BUDGET,REDUCE_ONLY\n")
    call_command("load_event_days", str(path))
    assert EventDay.objects.get(date=dt.date(2028, 2, 1)).action == "REDUCE_ONLY"
    assert AuditRecord.objects.filter(action="risk.event_days_loaded").count() == 2


@pytest.mark.django_db
def test_a_bad_file_writes_nothing_and_names_every_bad_row(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        '[{"date": "2028-13-01", "kind": "BUDGET"}, {"date": "2028-03-01", "kind": "ELECTION"},'
        ' {"date": "2028-03-02", "kind": "OTHER"}]'
    )
    with pytest.raises(CommandError) as error:
        call_command("load_event_days", str(path))
    assert "row 1: date" in str(error.value) and "row 2: kind" in str(error.value)
    assert not EventDay.objects.filter(date__year=2028).exists()


@pytest.mark.django_db
def test_the_risk_panel_shows_the_event_the_day_before_and_on_the_day(monkeypatch):
    from django.template.loader import render_to_string

    from quanthub.clock import IST
    from trading import selectors

    EventDay.objects.create(date=dt.date(2027, 2, 1), kind="BUDGET", note="Union Budget 2027-28")
    for day, shown, word in [
        (dt.date(2027, 1, 29), False, ""),
        (dt.date(2027, 1, 31), True, "Tomorrow"),
        (dt.date(2027, 2, 1), True, "Today"),
        (dt.date(2027, 2, 2), False, ""),
    ]:
        at = dt.datetime.combine(day, dt.time(10), tzinfo=IST)
        monkeypatch.setattr(selectors, "market_now", lambda account, at=at: at)
        panel = selectors.risk_panel()
        html = render_to_string("trading/panels.html#risk", {"risk": panel})
        assert ("Union Budget 2027-28" in html) is shown
        if shown:
            assert f"{word} " in html
