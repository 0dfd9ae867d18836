"""Register market-data retention every 6 hours in django-celery-beat, so
operators see and edit it in the admin."""

from __future__ import annotations

from django.db import migrations


def schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every_6h, _ = IntervalSchedule.objects.get_or_create(every=6, period="hours")
    PeriodicTask.objects.get_or_create(
        name="Prune market data (retention tiers)",
        defaults={"task": "marketdata.prune_marketdata", "interval": every_6h, "enabled": True},
    )


def unschedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(task="marketdata.prune_marketdata").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("marketdata", "0003_partition_raw_tables"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule)]
