"""Celery application.

Periodic tasks live in django-celery-beat's database scheduler and are created
by data migrations, so operators see and edit them in the admin. Without
``REDIS_URL`` tasks run eagerly in-process and the engine's scheduler calls
the same task functions.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quanthub.settings")

app = Celery("quanthub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
