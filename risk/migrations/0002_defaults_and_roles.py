"""Product-default risk limits, the default account's trading state, and the
three roles with their permissions."""

from __future__ import annotations

from django.db import migrations

from quanthub.roles import sync_roles


def create_defaults(apps, schema_editor):
    RiskLimits = apps.get_model("risk", "RiskLimits")
    TradingState = apps.get_model("risk", "TradingState")
    if not RiskLimits.objects.filter(is_active=True).exists():
        RiskLimits.objects.create(name="Product defaults", is_active=True, updated_by="migration")
    TradingState.objects.get_or_create(
        account="default", defaults={"state": "ACTIVE", "actor": "migration", "reason": "initial state"}
    )


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("risk", "0001_initial"),
        ("trading", "0001_initial"),
        ("marketdata", "0001_initial"),
        ("audit", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(create_defaults, migrations.RunPython.noop),
        migrations.RunPython(sync_roles, migrations.RunPython.noop),
    ]
