"""The dashboard websocket: one per open page.

Anonymous users and users without a role are refused in ``connect``. A
connected page joins its account's group and gets the current panels at once;
after that every committed change arrives as HTML that htmx's ws extension
swaps in by element id. The consumer never writes.
"""

from __future__ import annotations

import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from quanthub import metrics
from quanthub.roles import roles_of
from trading.events import group_name

log = logging.getLogger(__name__)

# Sent on connect: the panels a page may show (htmx ignores ids it cannot find).
INITIAL_PANELS = ("overview", "killall", "risk", "positions", "scorecards", "alerts", "latency", "alphadecay")
CLOSE_FORBIDDEN = 4403


class DashboardConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not await database_sync_to_async(roles_of)(user):
            log.warning("dashboard websocket refused", extra={"user": getattr(user, "pk", None)})
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.account = settings.QUANTHUB_ACCOUNT
        self.group = group_name(self.account)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        metrics.WS_CONNECTIONS.inc()
        await self.send(text_data=await database_sync_to_async(self._current)(self._wanted()))

    def _wanted(self) -> list[str]:
        """The panels the page asked for (``?panels=overview,chain-NIFTY``), else all."""
        from urllib.parse import parse_qs

        query = parse_qs(self.scope.get("query_string", b"").decode("ascii", "replace"))
        wanted = [p for p in ",".join(query.get("panels", [])).split(",") if p]
        return wanted or [*INITIAL_PANELS, *(f"chain-{u}" for u in ("NIFTY", "BANKNIFTY"))]

    def _current(self, wanted: list[str]) -> str:
        from trading import dashboard

        parts = []
        for name in wanted:
            if name.startswith("chain-") and name[6:] in dashboard.UNDERLYINGS:
                parts.append(dashboard.render_panel("chain", {"underlying": name[6:]}, account=self.account))
            elif name in dashboard.PANELS and name != "chain":
                parts.append(dashboard.render_panel(name, account=self.account))
        return "".join(parts)

    async def disconnect(self, code):
        group = getattr(self, "group", None)
        if group is not None:
            metrics.WS_CONNECTIONS.dec()
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        # The ws extension sends form values on hx-ws="send"; the dashboards use
        # plain htmx POSTs for actions, so anything received here is ignored.
        return

    async def dashboard_event(self, event):
        html = event.get("html")
        if html:
            await self.send(text_data=html)
            metrics.pushed(event)
