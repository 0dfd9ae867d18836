"""Back up the database every night at 23:30 IST, in django-celery-beat, so operators
see and edit the schedule in the admin."""

from __future__ import annotations

from django.db import migrations


def schedule(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    nightly, _ = CrontabSchedule.objects.get_or_create(
        minute="30", hour="23", day_of_week="*", day_of_month="*", month_of_year="*", timezone="Asia/Kolkata"
    )
    PeriodicTask.objects.get_or_create(
        name="Back up the database (nightly, with retention)",
        defaults={"task": "quanthub.nightly_backup", "crontab": nightly, "enabled": True},
    )


def unschedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(task="quanthub.nightly_backup").delete()


class Migration(migrations.Migration):
    dependencies = [("django_celery_beat", "0019_alter_periodictasks_options")]

    operations = [migrations.RunPython(schedule, unschedule)]
