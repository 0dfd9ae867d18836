from __future__ import annotations

from trading.conftest import book, clock, oms, option, paper  # noqa: F401  (shared fixtures)
