"""Seed the event calendar for 2026 and 2027 (risk managers edit it in the admin;
``manage.py load_event_days FILE`` loads later years).

Sources, and what is provisional:

* RBI monetary-policy announcement days (the last day of each MPC meeting):
  RBI press release "Schedule of Monetary Policy Committee meetings" for
  2025-26 (the 6 Feb 2026 meeting) and 2026-27 (April 2026 – February 2027).
  The 2026-27 dates are as best known when this was written and are marked
  provisional; the 2027-28 meetings (April – December 2027) follow RBI's usual
  pattern and are provisional until RBI publishes that schedule.
* Union Budget: 1 February (Ministry of Finance). 2026 was presented on
  Sunday 1 February 2026 (NSE held a special session); 2027 is provisional.
* US CPI release days: U.S. Bureau of Labor Statistics, "Consumer Price Index
  release schedule" (bls.gov/schedule/news_release/cpi.htm). Released at
  08:30 ET, which is 18:00/19:00 IST, after NSE's close: the rule keeps new
  entries out on the release day. 2026 as published by BLS (best known);
  2027 is provisional until BLS publishes it.
* NSE trading holidays: NSE circular "Holidays for the calendar year 2026"
  (equity and equity derivatives segments). 2027: only the fixed-date
  national holidays that fall on weekdays are known; all are provisional
  until NSE's 2027 circular (usually in December), which load_event_days
  brings in.

Actions: NSE holidays HALT (the exchange is shut); the rest NO_NEW_ENTRIES.
"""

from __future__ import annotations

from django.db import migrations

from risk.calendars import CALENDAR_2026_2027


def seed(apps, schema_editor):
    EventDay = apps.get_model("risk", "EventDay")
    for row in CALENDAR_2026_2027:
        EventDay.objects.update_or_create(
            date=row["date"],
            kind=row["kind"],
            defaults={k: v for k, v in row.items() if k not in ("date", "kind")},
        )


def unseed(apps, schema_editor):
    EventDay = apps.get_model("risk", "EventDay")
    for row in CALENDAR_2026_2027:
        EventDay.objects.filter(date=row["date"], kind=row["kind"], source=row["source"]).delete()


class Migration(migrations.Migration):
    dependencies = [("risk", "0007_event_day_source")]
    operations = [migrations.RunPython(seed, unseed)]
