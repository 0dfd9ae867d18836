"""The dashboard websocket: one per open page, and the web tier's panel renderer.

Anonymous users and users without a role are refused in ``connect``. A
connected page joins its account's group and gets the panels it shows
(``?panels=overview,chain-NIFTY``) at once. After that the engine and the
services publish facts (``trading.events``); this module turns each fact into
the panels it changes, renders each of them once per process for every page
watching the account (``PanelCache``: keyed by account, panel and the fact's
version), and sends a page only the parts of the panels it shows whose content
changed since its last frame (a content hash per part and connection; a panel is
one part, or several when ``trading.dashboard.FRAGMENTS`` splits it). A fact
crosses the channel layer once per web process, not once per page
(``ProcessFanout``), and each distinct frame is joined once for all the pages
that get it. Facts changing different panels are delivered side by side; facts
changing the same panel are delivered in order, and one overtaken by a newer
fact of the same panel before its turn is skipped. The consumer never writes.
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
    # (element id, HTML, digest) of each part htmx swaps by its id: the panel, or its fragments.
    parts: tuple[tuple[str, str, str], ...] = ()
    at: float = 0.0
    task: asyncio.Future | None = field(default=None, repr=False)

    @property
    def html(self) -> str:
        return "".join(html for _, html, _ in self.parts)


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
            rendered = await database_sync_to_async(dashboard.render_parts)(
                [e.key for e in entries], data, account=account, can=can
            )
        except Exception:  # a broken partial loses one push, never the socket
            log.exception("panel render failed", extra={"panels": [e.key for e in entries]})
            rendered = {}
        now = time.monotonic()
        for entry in entries:
            entry.parts = tuple((pid, html, digest(html)) for pid, html in rendered.get(entry.key, ()) if html)
            entry.at = now
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
    # Per panel (and chain expiry): the newest fact's version, and the delivery that
    # must finish before the next fact of that panel is delivered.
    latest: dict = field(default_factory=dict)
    tails: dict = field(default_factory=dict)
    deliveries: set = field(default_factory=set)


def _slot(key: str, data: dict) -> tuple[str, str | None]:
    """What a newer fact supersedes: the panel, and for a chain its expiry too (a page
    may watch one expiry's chain, which another expiry's fact does not replace)."""
    return key, data.get("expiry") if key.startswith("chain-") else None


class ProcessFanout:
    """One channel-layer member per web process and account group.

    Each page joining the group itself would make the publisher serialise every fact
    once per page, Redis carry it once per page and this process read it back once
    per page: for a chain fact at 200 pages, megabytes a push. Instead the process
    joins the group with one channel of its own, reads each fact once, and delivers
    it to every page it serves.

    A delivery renders the fact's panels once per permission set, compares each part
    with what each page last got, joins each distinct frame once and writes it to the
    pages in one pass, without a task or a lock per page. The pump does not wait for
    a delivery: a chain fact is not held behind the heartbeat's fan-out to pages that
    do not show the chain. Facts of the same panel are delivered in the order they
    arrived, and a fact whose panels all have a newer fact waiting is skipped, so a
    burst renders and sends the latest state once.
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
            # Which panels the fact changes, once for every page.
            data = event.get("data") or {}
            keys = dashboard.panel_keys(event.get("kind"), data)
            if not keys:
                continue
            slots = [_slot(key, data) for key in keys]
            before = {id(t): t for t in (members.tails.get(slot) for slot in slots) if t is not None and not t.done()}
            version = event.get("v", "")
            task = members.loop.create_task(self._deliver(members, event, data, keys, list(before.values())))
            for slot in slots:
                members.latest[slot], members.tails[slot] = version, task
            members.deliveries.add(task)
            task.add_done_callback(members.deliveries.discard)

    async def _deliver(
        self, members: _Members, event: dict, data: dict, keys: list[str], before: list[asyncio.Task]
    ) -> None:
        if before:  # the previous facts of these panels first (their failures are their own)
            await asyncio.wait(before)
        version = event.get("v", "")
        keys = [key for key in keys if members.latest.get(_slot(key, data)) == version]
        if not keys:  # every panel of it has a newer fact waiting, which will show it
            return
        try:
            await self._send(members, event, data, keys)
        except asyncio.CancelledError:
            raise
        except Exception:  # one broken delivery loses one push, never the pump
            log.exception("dashboard delivery failed", extra={"kind": event.get("kind")})

    async def _send(self, members: _Members, event: dict, data: dict, keys: list[str]) -> None:
        # The pages showing one of the panels, by permission set: one rendering each.
        variants: dict[str, tuple[dict, list, set]] = {}
        for page in list(members.pages):
            shown = [key for key in keys if page._shows(key, data)]
            if shown:
                can, pages, union = variants.setdefault(ui_variant(page.can), (page.can, [], set()))
                pages.append((page, shown))
                union.update(shown)
        version = event.get("v", "")
        for can, pages, union in variants.values():
            account = pages[0][0].account
            entries = await CACHE.get_many(account, [k for k in keys if k in union], version, data, can)
            by_key = {entry.key: entry for entry in entries}
            frames: dict[tuple[str, ...], str] = {}  # the changed parts' digests -> the frame, joined once
            for page, shown in pages:
                frame = page.offer([by_key[key] for key in shown], frames)
                if frame is None:
                    continue
                try:
                    await page.send(text_data=frame)
                except Exception as exc:  # a page that went away loses its frame, no one else's
                    log.info("dashboard push to a page failed", extra={"page": page.channel_name, "error": repr(exc)})
                    continue
                metrics.pushed(event)


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
        self.sent: dict[str, str] = {}  # part id -> digest of the content last sent
        # Facts delivered while the current panels are rendered wait here (the newest
        # rendering per panel), then are compared with what the first frame carried.
        self.ready = False
        self.waiting: dict[str, Rendered] = {}
        self.joined = True
        await FANOUT.join(self)
        await self.accept()
        metrics.WS_CONNECTIONS.inc()
        self.counted = True
        await self.send(text_data=await self._current())
        self.ready = True
        waiting, self.waiting = list(self.waiting.values()), {}
        frame = self.offer(waiting, {})
        if frame is not None:
            await self.send(text_data=frame)

    async def _current(self) -> str:
        parts = []
        for key, expiry in self.wanted.items():
            if expiry is None:
                entry = await CACHE.current(self.account, key, self.can)
                found = entry.parts
            else:  # one expiry's chain, as the page asked for it
                data = {"underlying": key[6:], "expiry_wanted": expiry}
                found = await database_sync_to_async(dashboard.render_parts)(
                    [key], data, account=self.account, can=self.can
                )
                found = [(pid, html, digest(html)) for pid, html in found.get(key, ())]
            for pid, html, dg in found:
                self.sent[pid] = dg
                parts.append(html)
        return "".join(parts)

    async def disconnect(self, code):
        if getattr(self, "counted", False):
            self.counted = False
            metrics.WS_CONNECTIONS.dec()
        if getattr(self, "joined", False):
            self.joined = False
            await FANOUT.leave(self)

    async def receive(self, text_data=None, bytes_data=None):
        # The ws extension sends form values on hx-ws="send"; the dashboards use
        # plain htmx POSTs for actions, so anything received here is ignored.
        return

    def _shows(self, key: str, data: dict) -> bool:
        if key not in self.wanted:
            return False
        expiry = self.wanted[key]
        return expiry is None or data.get("expiry") == expiry

    def offer(self, entries: list[Rendered], frames: dict[tuple[str, ...], str]) -> str | None:
        """The frame this page should get for these renderings: the parts whose content
        differs from what it last got, or None. ``frames`` holds the frames already
        joined for other pages of this delivery (keyed by the parts' digests), so a
        frame is joined once however many pages get it."""
        if not getattr(self, "joined", False):
            return None
        if not self.ready:
            for entry in entries:
                self.waiting[entry.key] = entry
            return None
        changed = [(pid, html, dg) for entry in entries for pid, html, dg in entry.parts if self.sent.get(pid) != dg]
        if not changed:
            return None
        for pid, _, dg in changed:
            self.sent[pid] = dg
        signature = tuple(dg for _, _, dg in changed)
        frame = frames.get(signature)
        if frame is None:
            frame = frames[signature] = "".join(html for _, html, _ in changed)
        return frame
