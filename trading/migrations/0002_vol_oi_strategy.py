"""Register the Volume-OI strategy, disabled: a risk manager (or seed_demo) enables it."""

from __future__ import annotations

from django.db import migrations


def create_strategy(apps, schema_editor):
    Strategy = apps.get_model("trading", "Strategy")
    Strategy.objects.get_or_create(key="vol_oi", defaults={"name": "Volume-OI", "enabled": False, "params": {}})


class Migration(migrations.Migration):
    dependencies = [("trading", "0001_initial")]

    operations = [migrations.RunPython(create_strategy, migrations.RunPython.noop)]
