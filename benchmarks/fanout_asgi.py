"""The fan-out benchmark's web process: Quant Hub's ASGI application, with one
hidden element added to the panels the benchmark times.

``trading.consumers`` renders every panel through ``trading.dashboard.render_key``
(once per fact per process). When the fact carries the benchmark's sequence
number, the positions and chain panels get a marker with that number, the
publish call's time and the moment the rendering ended, so a client can time
each frame. Every other panel is left as it is: it is sent only when its
content changes, exactly as in production.
"""

from __future__ import annotations

import time

from quanthub.asgi import application  # noqa: F401  (sets Django up first)
from trading import dashboard

TIMED = ("positions", "chain-")
_render_key = dashboard.render_key


def render_key(key: str, data: dict | None = None, *, account: str | None = None, can: dict | None = None) -> str:
    html = _render_key(key, data, account=account, can=can)
    if data and "bench_seq" in data and key.startswith(TIMED):
        from fanout import marker_html

        kind = "chain" if key.startswith("chain-") else "heartbeat"
        html += marker_html(kind, data["bench_seq"], data["bench_t"], time.time_ns(), panel=key)
    return html


dashboard.render_key = render_key
