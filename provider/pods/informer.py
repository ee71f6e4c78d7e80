"""A raw-JSON list+watch cache of the pods bound to this node.

Tracks resourceVersion (bookmarks included), relists on 410 Gone, backs off on errors,
and calls ``on_change(uid)`` for every added, modified or deleted pod, so the work queue
sees each change without deserializing into models.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from provider.kubeclient import ApiError, KubeClient, sleep_backoff
from provider.metrics import INFORMER_RELISTS, INFORMER_WATCH_ERRORS

log = logging.getLogger(__name__)
JSON = dict[str, Any]


class PodInformer:
    def __init__(
        self, client: KubeClient, node_name: str, on_change: Callable[[str], None], watch_timeout: int = 240
    ) -> None:
        self._client = client
        self._selector = f"spec.nodeName={node_name}"
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self.pods: dict[str, JSON] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""

    def get(self, uid: str) -> JSON | None:
        return self.pods.get(uid)

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion; relist on 410 or repeated failures.

        Every failure backs off (jittered, up to 10 s), and so does a watch the server closes at
        once without a single event (an apiserver shutting down or still starting), so an
        unreachable or flapping apiserver never sees a hot loop of reconnects.
        """
        failures = 0
        need_list = "initial"
        while True:
            try:
                if need_list:
                    await self._relist()
                    INFORMER_RELISTS.labels(reason=need_list).inc()
                    need_list = ""
                started, events = time.monotonic(), 0
                async for ev in self._client.watch(
                    "/api/v1/pods",
                    self.resource_version,
                    timeout_seconds=self._watch_timeout,
                    fieldSelector=self._selector,
                ):
                    self._apply(ev)
                    events += 1
                    failures = 0
                if events == 0 and time.monotonic() - started < 1.0:
                    failures += 1  # closed at once: back off like an error
                    await sleep_backoff(failures, cap=10.0)
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.gone:
                    log.info("pod watch expired, relisting rv=%s", self.resource_version)
                    need_list = "gone"
                    continue
                failures += 1
                INFORMER_WATCH_ERRORS.inc()
                log.warning("pod watch failed status=%s err=%s attempt=%d", e.status, e.message, failures)
                await sleep_backoff(failures, cap=10.0)
                need_list = "errors" if failures > 3 else ""
            except Exception as e:
                failures += 1
                INFORMER_WATCH_ERRORS.inc()
                log.warning("pod watch error err=%r attempt=%d", e, failures)
                await sleep_backoff(failures, cap=10.0)
                need_list = "errors" if failures > 3 else ""

    async def _relist(self) -> None:
        page = await self._client.list_all("/api/v1/pods", fieldSelector=self._selector)
        fresh = {p["metadata"]["uid"]: p for p in page.get("items") or []}
        gone = set(self.pods) - set(fresh)
        changed = [
            uid
            for uid, p in fresh.items()
            if (self.pods.get(uid) or {}).get("metadata", {}).get("resourceVersion")
            != p["metadata"].get("resourceVersion")
        ]
        self.pods = fresh
        self.resource_version = (page.get("metadata") or {}).get("resourceVersion", "")
        self.synced.set()
        for uid in [*gone, *changed]:
            self._on_change(uid)

    def _apply(self, ev: JSON) -> None:
        obj = ev.get("object") or {}
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if rv:
            self.resource_version = rv
        kind = ev.get("type")
        if kind == "BOOKMARK":
            return
        uid = meta.get("uid")
        if not uid:
            return
        if kind == "DELETED":
            self.pods.pop(uid, None)
        else:
            self.pods[uid] = obj
        self._on_change(uid)
