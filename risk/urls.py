from __future__ import annotations

app_name = "risk"

urlpatterns: list = []
