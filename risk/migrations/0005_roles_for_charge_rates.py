from __future__ import annotations

from django.db import migrations

from quanthub.roles import sync_roles


class Migration(migrations.Migration):
    dependencies = [("risk", "0004_seed_charge_rates"), ("trading", "0003_dhan_token_refresh_task")]

    operations = [migrations.RunPython(sync_roles, migrations.RunPython.noop)]
