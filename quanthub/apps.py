from __future__ import annotations

from django.apps import AppConfig


class QuantHubConfig(AppConfig):
    name = "quanthub"
    verbose_name = "Quant Hub"

    def ready(self) -> None:
        from quanthub import checks  # noqa: F401  (registers the system checks)
