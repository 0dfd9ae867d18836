"""The dashboard websocket: one per open page, and the web tier's panel renderer.

Anonymous users and users without a role are refused in ``connect``. A
connected page joins its account's group and gets the panels it shows
(``?panels=overview,chain-NIFTY``) at once. After that the engine and the
services publish facts (``trading.events``); this module turns each fact into
the panels it changes, renders each of them once per process for every page
watching the account (``PanelCache``: keyed by account, panel and the fact's
version), and sends a page only the panels it shows whose content changed since
its last frame (a content hash per panel and connection). A fact crosses the
channel layer once per web process, not once per page (``ProcessFanout``). The
consumer never writes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from quanthub import metrics
from quanthub.context_processors import ui_can, ui_variant
from quanthub.roles import roles_of
from trading import dashboard
from trading.events import group_name

log = logging.getLogger(__name__)

# A page that names no panels gets these (htmx ignores ids it cannot find).
INITIAL_PANELS = ("overview", "killall", "risk", "positions", "scorecards", "alerts", "latency", "alphadecay")
CLOSE_FORBIDDEN = 4403
# A new page takes the latest rendering of a panel younger than this instead of
# rendering its own (the next fact renders it again in any case).
FRESH_S = 2.0


def digest(html: str) -> str:
    return hashlib.blake2b(html.encode(), digest_size=12).hexdigest()


@dataclass
class Rendered:
    version: str
    key: str
    html: str = ""
    digest: str = ""
    at: float = 0.0
    task: asyncio.Future | None = field(default=None, repr=False)


class PanelCache:
    """One rendering per (account, permission set, panel key, fact version) in this
    process: pages of users who may use the same controls share it.

    The first connection to see a fact starts the rendering of the panels it shows
    (in one trip to the database thread); every other connection of this process
    watching the same account awaits the same rendering. Only the latest version of
    each panel is kept. The rendering is a task of its own, so a page that closes
    meanwhile cancels only its own wait.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Rendered] = {}
        self.renders = 0

    async def _render(self, entries: list[Rendered], account: str, data: dict | None, can: dict) -> None:
        try:
            html = await database_sync_to_async(dashboard.render_keys)(
                [e.key for e in entries], data, account=account, can=can
            )
        except Exception:  # a broken partial loses one push, never the socket
            log.exception("panel render failed", extra={"panels": [e.key for e in entries]})
            html = {}
        now = time.monotonic()
        for entry in entries:
            entry.html = html.get(entry.key, "")
            entry.digest, entry.at = digest(entry.html), now
        self.renders += len(entries)

    async def get_many(
        self, account: str, keys: list[str], version: str, data: dict | None, can: dict | None = None
    ) -> list[Rendered]:
        can = can or {}
        variant = ui_variant(can)
        found = [self._entries.get((account, variant, key)) for key in keys]
        missing = [
            Rendered(version, key)
            for key, entry in zip(keys, found, strict=True)
            if entry is None or entry.version != version
        ]
        if missing:
            task = asyncio.ensure_future(self._render(missing, account, data, can))
            for entry in missing:
                entry.task = task
                self._entries[(account, variant, entry.key)] = entry
        entries = [self._entries[(account, variant, key)] for key in keys]
        for task in {id(e.task): e.task for e in entries}.values():
            if not task.done():  # every page but the first finds it rendered
                await asyncio.shield(task)
        return entries

    async def get(self, account: str, key: str, version: str, data: dict | None, can: dict | None = None) -> Rendered:
        return (await self.get_many(account, [key], version, data, can))[0]

    async def current(self, account: str, key: str, can: dict | None = None) -> Rendered:
        """For a page that just connected: the latest rendering of the panel if it is
        still rendering or younger than ``FRESH_S``, else a new one that the pages
        connecting after it share. A burst of page loads renders each panel once,
        and any change after the rendering arrives as a fact of its own."""
        entry = self._entries.get((account, ui_variant(can or {}), key))
        if (
            entry is not None
            and entry.task is not None
            and (not entry.task.done() or time.monotonic() - entry.at <= FRESH_S)
        ):
            await asyncio.shield(entry.task)
            return entry
        return await self.get(account, key, f"connect-{time.monotonic_ns()}", None, can)

    def clear(self) -> None:
        self._entries.clear()


CACHE = PanelCache()

# channels-redis forgets a group member after a day (its group_expiry); the process's
# membership is renewed well before that.
REJOIN_S = 3600.0


@dataclass(eq=False)
class _Members:
    layer: object
    loop: asyncio.AbstractEventLoop
    channel: str
    pages: set = field(default_factory=set)
    joined_at: float = -1e18
    task: asyncio.Task | None = None


class ProcessFanout:
    """One channel-layer member per web process and account group.

    Each page joining the group itself would make the publisher serialise every fact
    once per page, Redis carry it once per page and this process read it back once
    per page: for a chain fact at 200 pages, megabytes a push. Instead the process
    joins the group with one channel of its own, reads each fact once, and hands it
    to every page it serves, in the order the facts arrive.
    """

    def __init__(self) -> None:
        self._groups: dict[str, _Members] = {}

    async def join(self, page: DashboardConsumer) -> None:
        layer, loop = page.channel_layer, asyncio.get_running_loop()
        members = self._groups.get(page.group)
        if members is None or members.layer is not layer or members.loop is not loop or members.task.done():
            members = _Members(layer, loop, await layer.new_channel())
            members.task = loop.create_task(self._pump(page.group, members))
            self._groups[page.group] = members
        members.pages.add(page)
        await self._renew(page.group, members)

    async def leave(self, page: DashboardConsumer) -> None:
        members = self._groups.get(page.group)
        if members is None:
            return
        members.pages.discard(page)
        if not members.pages and self._groups.get(page.group) is members:
            del self._groups[page.group]
            members.task.cancel()
            await members.layer.group_discard(page.group, members.channel)

    async def _renew(self, group: str, members: _Members) -> None:
        if time.monotonic() - members.joined_at > REJOIN_S:
            members.joined_at = time.monotonic()
            await members.layer.group_add(group, members.channel)

    async def _pump(self, group: str, members: _Members) -> None:
        while True:
            try:
                event = await members.layer.receive(members.channel)
                await self._renew(group, members)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis gone: the pages wait, the process keeps its place
                log.warning("dashboard fan-out receive failed", extra={"group": group, "error": repr(exc)})
                members.joined_at = -1e18
                await asyncio.sleep(1.0)
                continue
            if event.get("type") != "dashboard.fact":
                continue
            # Which panels the fact changes, once for every page; only the pages showing
            # one of them are handed it.
            data = event.get("data") or {}
            keys = dashboard.panel_keys(event.get("kind"), data)
            pages = [page for page in members.pages if any(page._shows(key, data) for key in keys)]
            if not pages:
                continue
            results = await asyncio.gather(*(page.take(event, keys) for page in pages), return_exceptions=True)
            for page, result in zip(pages, results, strict=True):
                if isinstance(result, Exception):  # a page that went away loses its frame, no one else's
                    log.info(
                        "dashboard push to a page failed", extra={"page": page.channel_name, "error": repr(result)}
                    )


FANOUT = ProcessFanout()


def wanted_panels(query_string: bytes) -> dict[str, str | None]:
    """Panel key → expiry filter (chains only) from ``?panels=``; unknown keys are
    dropped. ``chain-NIFTY@2026-12-04``: that expiry's chain only."""
    query = parse_qs(query_string.decode("ascii", "replace"))
    names = [p for p in ",".join(query.get("panels", [])).split(",") if p]
    if not names:
        names = [*INITIAL_PANELS, *(f"chain-{u}" for u in dashboard.UNDERLYINGS)]
    wanted: dict[str, str | None] = {}
    for name in names:
        key, _, expiry = name.partition("@")
        if dashboard.valid_key(key):
            wanted[key] = expiry or None
    return wanted


def _access(user) -> tuple[bool, dict[str, bool]]:
    if user is None or not user.is_authenticated or not roles_of(user):
        return False, {}
    return True, ui_can(user)


class DashboardConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        user = self.scope.get("user")
        # One trip to the database thread for the role and the controls: a burst of
        # handshakes queues there, and each trip is a turn in the queue.
        allowed, self.can = await database_sync_to_async(_access)(user)
        if not allowed:
            log.warning("dashboard websocket refused", extra={"user": getattr(user, "pk", None)})
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.account = settings.QUANTHUB_ACCOUNT
        self.group = group_name(self.account)
        self.wanted = wanted_panels(self.scope.get("query_string", b""))
        self.sent: dict[str, str] = {}  # panel key -> digest of the content last sent
        # Facts arriving while the current panels are rendered wait for them, then
        # are compared with what was sent.
        self._turn = asyncio.Lock()
        async with self._turn:
            self.joined = True
            await FANOUT.join(self)
            await self.accept()
            metrics.WS_CONNECTIONS.inc()
            self.counted = True
            await self.send(text_data=await self._current())

    async def _current(self) -> str:
        parts = []
        for key, expiry in self.wanted.items():
            if expiry is None:
                html = (await CACHE.current(self.account, key, self.can)).html
            else:  # one expiry's chain, as the page asked for it
                data = {"underlying": key[6:], "expiry_wanted": expiry}
                html = await database_sync_to_async(dashboard.render_key)(key, data, account=self.account, can=self.can)
            self.sent[key] = digest(html)
            parts.append(html)
        return "".join(parts)

    async def disconnect(self, code):
        if getattr(self, "counted", False):
            self.counted = False
            metrics.WS_CONNECTIONS.dec()
        if getattr(self, "joined", False):
            self.joined = False
            await FANOUT.leave(self)

    async def take(self, event, keys: list[str]) -> None:
        """A fact handed over by this process's member of the group, with the panel keys it changes."""
        if getattr(self, "joined", False):
            async with self._turn:
                await self.dashboard_fact(event, keys)

    async def receive(self, text_data=None, bytes_data=None):
        # The ws extension sends form values on hx-ws="send"; the dashboards use
        # plain htmx POSTs for actions, so anything received here is ignored.
        return

    def _shows(self, key: str, data: dict) -> bool:
        if key not in self.wanted:
            return False
        expiry = self.wanted[key]
        return expiry is None or data.get("expiry") == expiry

    async def dashboard_fact(self, event, keys: list[str] | None = None):
        kind, data, version = event.get("kind"), event.get("data") or {}, event.get("v", "")
        keys = [key for key in (dashboard.panel_keys(kind, data) if keys is None else keys) if self._shows(key, data)]
        if not keys:
            return
        parts = []
        for entry in await CACHE.get_many(self.account, keys, version, data, self.can):
            key = entry.key
            if entry.html and self.sent.get(key) != entry.digest:
                self.sent[key] = entry.digest
                parts.append(entry.html)
        if parts:
            await self.send(text_data="".join(parts))
            metrics.pushed(event)
