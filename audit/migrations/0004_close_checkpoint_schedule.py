"""Write a signed audit checkpoint at 15:35 IST on weekdays, after the close, in
django-celery-beat, so operators see and edit the schedule in the admin."""

from __future__ import annotations

from django.db import migrations


def schedule(apps, schema_editor):
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    after_close, _ = CrontabSchedule.objects.get_or_create(
        minute="35", hour="15", day_of_week="1-5", day_of_month="*", month_of_year="*", timezone="Asia/Kolkata"
    )
    PeriodicTask.objects.get_or_create(
        name="Audit checkpoint at the close",
        defaults={"task": "audit.checkpoint_close", "crontab": after_close, "enabled": True},
    )


def unschedule(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(task="audit.checkpoint_close").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("audit", "0003_chain_head_mac"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule)]
