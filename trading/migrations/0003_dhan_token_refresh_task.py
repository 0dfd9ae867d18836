"""Schedule the Dhan token refresh at 08:50 IST in django-celery-beat."""

from __future__ import annotations

from django.db import migrations


def schedule(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    at_0850, _ = CrontabSchedule.objects.get_or_create(
        minute="50", hour="8", day_of_week="*", day_of_month="*", month_of_year="*", timezone="Asia/Kolkata"
    )
    PeriodicTask.objects.get_or_create(
        name="Refresh the Dhan access token",
        defaults={"task": "trading.refresh_dhan_token", "crontab": at_0850, "enabled": True},
    )


def unschedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(task="trading.refresh_dhan_token").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("trading", "0002_vol_oi_strategy"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule)]
