from __future__ import annotations

app_name = "trading"

urlpatterns: list = []
