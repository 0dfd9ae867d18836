from __future__ import annotations

from trading.tests.conftest import book, clock, oms, option, paper  # noqa: F401  (shared fixtures)
