from __future__ import annotations

from trading.routing import websocket_urlpatterns as trading_websockets

websocket_urlpatterns = [*trading_websockets]
