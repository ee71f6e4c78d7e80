"""A raw-JSON list+watch cache of the pods bound to this node.

A :class:`provider.reflector.Reflector` on the pods field-selected by ``spec.nodeName`` (bookmarks,
410 relists, back-off), calling ``on_change(uid)`` for every added, modified or deleted pod, so
the work queue sees each change without deserializing into models.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any

from provider.kubeclient import KubeClient
from provider.metrics import INFORMER_RELISTS, INFORMER_WATCH_ERRORS
from provider.node_scope import pod_scope
from provider.reflector import Reflector

JSON = dict[str, Any]


class PodInformer:
    def __init__(
        self,
        client: KubeClient,
        node_name: str | Collection[str],
        on_change: Callable[[str], None],
        watch_timeout: int = 240,
    ) -> None:
        """``node_name``: the node, or every node of a multi-node process (provider.node_scope)."""
        self._on_change = on_change
        params, key = pod_scope([node_name] if isinstance(node_name, str) else node_name)
        self.reflector = Reflector(
            client,
            "/api/v1/pods",
            self._event,
            params=params,
            key=key,
            watch_timeout=watch_timeout,
            name="pods",
            on_relist=lambda reason: INFORMER_RELISTS.labels(reason=reason).inc(),
            on_watch_error=lambda _: INFORMER_WATCH_ERRORS.inc(),
        )

    @property
    def pods(self) -> dict[str, JSON]:
        """uid -> the pod as last listed or watched."""
        return self.reflector.objects

    @property
    def synced(self) -> asyncio.Event:
        return self.reflector.synced

    @property
    def resource_version(self) -> str:
        return self.reflector.resource_version

    def get(self, uid: str) -> JSON | None:
        return self.reflector.objects.get(uid)

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion until cancelled (see Reflector)."""
        await self.reflector.run()

    def _event(self, _etype: str, pod: JSON) -> None:
        self._on_change(pod["metadata"]["uid"])
