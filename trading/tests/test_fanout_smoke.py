"""The fan-out benchmark's statistics on a made-up stream (the benchmark itself
needs Redis and live servers, so it is run by hand, not here)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "fanout.py"


@pytest.fixture(scope="module")
def fanout():
    spec = importlib.util.spec_from_file_location("fanout_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_it_reads_back_the_marker_it_writes(fanout):
    frame = "<table id='positions'></table>" + fanout.marker_html("chain", 42, 1_700_000_000_123, 1_700_000_000_456)
    assert fanout.parse_marker(frame) == (42, 1_700_000_000_123, 1_700_000_000_456)
    assert fanout.parse_marker("<div id='positions' hx-swap-oob='true'>initial panel</div>") is None


def test_it_matches_numpy_percentiles(fanout):
    values = list(np.random.default_rng(3).exponential(20.0, 537))
    for q in (0, 50, 99, 100):
        assert fanout.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert math.isnan(fanout.percentile([], 50))


def test_it_counts_missing_sequence_numbers_per_client_as_dropped(fanout):
    published = list(range(1, 11))
    clients = [
        {"seqs": published, "latencies_ms": [5.0] * 10, "delivery_ms": [1.0] * 10},
        {"seqs": [1, 2, 3, 5, 6, 7, 8, 9], "latencies_ms": [5.0] * 7 + [300.0], "delivery_ms": [1.0] * 8},  # lost 4, 10
        {"seqs": [*published, 11], "latencies_ms": [5.0] * 11, "delivery_ms": [2.0] * 11},  # 11 was never published
    ]
    stats = fanout.summarise(published, clients)
    assert stats["dropped"] == 2
    assert stats["received"] == 29
    assert stats["p50_ms"] == 5.0
    assert stats["max_ms"] == 300.0
    assert stats["delivery_p50_ms"] == 1.0
    assert stats["delivery_p99_ms"] == 2.0
    assert fanout.dropped(published, []) == 10
