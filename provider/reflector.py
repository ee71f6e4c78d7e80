"""The one list + watch loop (client-go's Reflector): a local copy of a collection, kept current.

Why one: the pod informer, the placement view, the node controller and the benches each need
"list, then watch from the list's resourceVersion, relist when the watch expires", and each
hand-written copy handled a different subset of the hard cases. This one:

- lists (paginated), stores the objects by key (uid by default) and remembers the list's
  resourceVersion, then watches from it with bookmarks; every event (bookmarks included)
  advances the resourceVersion;
- on 410 Gone (an expired resourceVersion, by status or by an ERROR event) relists at once,
  replacing the store and delivering DELETED for objects that vanished meanwhile, ADDED for new
  ones and MODIFIED for changed ones (unchanged ones are not delivered again);
- on any other error, and on a watch the server ends at once without a single event, backs off
  (jittered, :mod:`common.retry`) and resumes the watch; after a few consecutive failures it
  relists; it never spins;
- is cancellable at any await, closing the watch's HTTP response (no orphan task or connection);
- optionally strips ``metadata.managedFields`` (often half of an object's size) before storing.

What to do on each event or failure is decided by the pure functions below (unit-tested);
:class:`Reflector` only does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from common.clock import SYSTEM, Clock
from common.jsonshare import StringPool
from common.retry import API_BACKOFF, Backoff
from provider.kubeclient import ApiError

log = logging.getLogger(__name__)
JSON = dict[str, Any]
EventHandler = Callable[[str, JSON], Awaitable[None] | None]
KeyFunc = Callable[[JSON], str | None]

ADDED, MODIFIED, DELETED, BOOKMARK = "ADDED", "MODIFIED", "DELETED", "BOOKMARK"
# a watch the server ends sooner than this without any event counts as a failure (an apiserver
# shutting down or still starting answers like that: reconnecting at once would be a hot loop)
QUICK_CLOSE_SECONDS = 1.0
RELIST_AFTER_FAILURES = 3


class ListWatchClient(Protocol):
    """What the reflector needs of :class:`provider.kubeclient.KubeClient`."""

    async def list_all(self, path: str, **params: Any) -> JSON: ...

    def watch(self, path: str, resource_version: str, timeout_seconds: int = ..., **params: Any) -> Any: ...


# ---------------------------------------------------------------------------------------- pure


def by_uid(obj: JSON) -> str | None:
    return (obj.get("metadata") or {}).get("uid") or None


def by_name(obj: JSON) -> str | None:
    """``namespace/name`` (client-go's MetaNamespaceKeyFunc), ``name`` for cluster objects."""
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name:
        return None
    ns = meta.get("namespace")
    return f"{ns}/{name}" if ns else str(name)


def resource_version(obj: JSON) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def strip_managed_fields(obj: JSON) -> JSON:
    """The object without ``metadata.managedFields`` (in place: objects are freshly decoded)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return obj


def relist_delta(old: Mapping[str, JSON], fresh: Mapping[str, JSON]) -> list[tuple[str, JSON]]:
    """The events that bring a handler from ``old`` to ``fresh``: DELETED (last known state) for
    vanished keys first, then ADDED for new keys and MODIFIED for changed resourceVersions."""
    out: list[tuple[str, JSON]] = [(DELETED, obj) for k, obj in old.items() if k not in fresh]
    for k, obj in fresh.items():
        prev = old.get(k)
        if prev is None:
            out.append((ADDED, obj))
        elif resource_version(prev) != resource_version(obj):
            out.append((MODIFIED, obj))
    return out


@dataclass(frozen=True)
class WatchEvent:
    """What one watch event means for the store."""

    action: Literal["upsert", "delete", "bookmark", "ignore"]
    resource_version: str  # "" when the event carries none (the current one stays)
    key: str | None = None


def classify(ev: JSON, key: KeyFunc) -> WatchEvent:
    obj = ev.get("object") or {}
    rv = resource_version(obj)
    kind = ev.get("type")
    if kind == BOOKMARK:
        return WatchEvent("bookmark", rv)
    k = key(obj)
    if kind not in (ADDED, MODIFIED, DELETED) or not k:
        return WatchEvent("ignore", rv)
    return WatchEvent("delete" if kind == DELETED else "upsert", rv, k)


@dataclass(frozen=True)
class Next:
    """What to do after a watch ended or failed."""

    failures: int  # consecutive failures so far
    relist: str = ""  # "" (resume the watch) or why: "gone", "errors", "initial"
    backoff: bool = False  # wait Backoff.delay(failures) first


def after_failure(
    failures: int, gone: bool, pending: str = "", relist_after: int = RELIST_AFTER_FAILURES
) -> Next:
    """A list or watch failed (``pending``: the relist that was due, if it was the list).

    410 Gone: relist at once. Else back off, and relist after ``relist_after`` consecutive
    failures; a relist that failed stays due."""
    if gone:
        return Next(failures, relist="gone")
    failures += 1
    relist = pending or ("errors" if failures > relist_after else "")
    return Next(failures, relist=relist, backoff=True)


def after_watch_end(failures: int, events: int, elapsed: float) -> Next:
    """The server ended the watch (its timeout, or a restart). Resume at once, unless it ended
    quickly without any event: then it counts as a failure and backs off."""
    if events == 0 and elapsed < QUICK_CLOSE_SECONDS:
        return Next(failures + 1, backoff=True)
    return Next(0 if events else failures)


# ---------------------------------------------------------------------------------------- I/O


class Reflector:
    """List + watch of one collection into :attr:`objects` (key -> raw JSON); see module doc.

    ``on_event(type, obj)`` (sync or async) sees the first list's objects as ADDED (unless
    ``replay_list=False``), the changes a relist finds (:func:`relist_delta`), then every
    ADDED / MODIFIED / DELETED watch event. ``on_list(objects)`` runs after every (re)list;
    ``on_relist(reason)`` and ``on_watch_error(error)`` are for metrics. ``metadata.managedFields``
    is dropped from every cached object unless ``strip_managed_fields=False``: it is often half an
    object's bytes and nothing in warmlet reads it (10,000 pods, thousands of nodes). With
    ``share_strings`` (the default) cached objects share their repeated keys and short values
    (:mod:`common.jsonshare`): half of a defaulted pod's remaining bytes.
    """

    def __init__(
        self,
        client: ListWatchClient,
        path: str,
        on_event: EventHandler | None = None,
        *,
        params: Mapping[str, str] | None = None,
        key: KeyFunc = by_uid,
        watch_timeout: int = 240,
        replay_list: bool = True,
        strip_managed_fields: bool = True,
        share_strings: bool = True,
        relist_after_failures: int = RELIST_AFTER_FAILURES,
        backoff: Backoff = API_BACKOFF,
        clock: Clock = SYSTEM,
        name: str = "",
        on_list: Callable[[Mapping[str, JSON]], None] | None = None,
        on_relist: Callable[[str], None] | None = None,
        on_watch_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.client, self.path = client, path
        self.params = dict(params or {})
        self.on_event = on_event
        self.key = key
        self.watch_timeout = watch_timeout
        self.replay_list = replay_list
        self.strip = strip_managed_fields
        self.strings = StringPool() if share_strings else None
        self.relist_after = relist_after_failures
        self.backoff = backoff
        self.clock = clock
        self.name = name or path
        self._on_list = on_list
        self._on_relist = on_relist
        self._on_watch_error = on_watch_error
        self.objects: dict[str, JSON] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.relists = 0

    async def run(self) -> None:
        """List and watch until cancelled."""
        state = Next(0, relist="initial")
        while True:
            try:
                if state.relist:
                    await self._list(state.relist)
                    state = Next(state.failures)
                started, events = self.clock.monotonic(), 0
                watch = self.client.watch(
                    self.path, self.resource_version, timeout_seconds=self.watch_timeout, **self.params
                )
                async with contextlib.aclosing(watch) as stream:
                    async for ev in stream:
                        events += 1
                        state = Next(0)
                        await self._apply(ev)
                state = after_watch_end(state.failures, events, self.clock.monotonic() - started)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                gone = isinstance(e, ApiError) and e.gone
                state = after_failure(state.failures, gone, state.relist, self.relist_after)
                if gone:
                    log.info("watch expired, relisting name=%s rv=%s", self.name, self.resource_version)
                else:
                    self._watch_error(e, state.failures)
            if state.backoff:
                await self.backoff.sleep(state.failures, self.clock)

    async def _list(self, reason: str) -> None:
        page = await self.client.list_all(self.path, **self.params)
        fresh: dict[str, JSON] = {}
        for obj in page.get("items") or []:
            k = self.key(obj)
            if k:
                fresh[k] = self._cached_form(obj, like=self.objects.get(k))
        first = not self.synced.is_set()
        delta = [] if first and not self.replay_list else relist_delta(self.objects, fresh)
        self.objects = fresh
        self.resource_version = resource_version(page)
        self.relists += 1
        if self._on_relist is not None:
            self._on_relist(reason)
        if self._on_list is not None:
            self._on_list(fresh)
        for etype, obj in delta:
            await self._emit(etype, obj)
        self.synced.set()

    async def _apply(self, ev: JSON) -> None:
        what = classify(ev, self.key)
        if what.resource_version:
            self.resource_version = what.resource_version
        if what.key is None:
            return
        deleted = what.action == "delete"
        obj = self._cached_form(
            ev.get("object") or {}, kept=not deleted, like=None if deleted else self.objects.get(what.key)
        )
        if deleted:
            self.objects.pop(what.key, None)
            await self._emit(DELETED, obj)
        else:
            self.objects[what.key] = obj
            await self._emit(str(ev.get("type")), obj)

    def _cached_form(self, obj: JSON, kept: bool = True, like: JSON | None = None) -> JSON:
        """A decoded object as the cache keeps it (and handlers see it); its strings are shared
        only when ``kept``: a deleted object is handed to the handler once and dropped. ``like``:
        the cached version it replaces, whose equal parts it takes over (``StringPool.share``)."""
        if self.strip:
            strip_managed_fields(obj)
        if kept and self.strings is not None:
            shared: JSON = self.strings.share(obj, like)
            return shared
        return obj

    async def _emit(self, etype: str, obj: JSON) -> None:
        if self.on_event is None:
            return
        result = self.on_event(etype, obj)
        if result is not None:
            await result

    def _watch_error(self, e: Exception, failures: int) -> None:
        status = f" status={e.status}" if isinstance(e, ApiError) else ""
        log.warning("watch failed name=%s%s err=%r attempt=%d", self.name, status, e, failures)
        if self._on_watch_error is not None:
            self._on_watch_error(e)
