"""A cheap, eventually consistent picture of warmlet's nodes for placement decisions.

Why not a cluster-wide pod informer: placement only needs the warmlet Nodes (label selector),
their Leases (polled per node: a watch on kube-node-lease would stream every node's renewals)
and the pods bound to each warmlet node (one field-selected watch per node, started and
stopped as nodes come and go). Bindings the binder just made are "assumed" on their node
until that node's watch shows them, like kube-scheduler's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from cachetools import TTLCache

from common.retry import API_BACKOFF, periodic
from provider.kubeclient import ApiError, KubeClient
from provider.placement.policy import (
    ADMISSION_ANNOTATION,
    NodeView,
    Resources,
    node_view,
    occupies_node,
    pod_request,
)
from provider.reflector import Reflector

log = logging.getLogger(__name__)
JSON = dict[str, Any]


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class NodePods:
    """The pods bound to one warmlet node and what they use."""

    def __init__(
        self,
        client: KubeClient,
        node: str,
        on_change: Callable[[], None],
        on_seen: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.node = node
        self._on_change = on_change
        self._on_seen = on_seen  # admission id of a pod seen bound here
        self.reflector = Reflector(
            client,
            "/api/v1/pods",
            self._event,
            params={"fieldSelector": f"spec.nodeName={node}"},
            name=f"placement-pods-{node}",
        )
        self.used = Resources()
        self._counted: dict[str, Resources] = {}

    def _event(self, etype: str, pod: JSON) -> None:
        uid = pod["metadata"]["uid"]
        old = self._counted.pop(uid, None)
        if old is not None:
            self.used = self.used - old
        if etype != "DELETED" and occupies_node(pod):
            aid = (pod["metadata"].get("annotations") or {}).get(ADMISSION_ANNOTATION)
            if aid:
                self._on_seen(aid)
            req = pod_request(pod)
            self._counted[uid] = req
            self.used = self.used + req
        if old is not None or uid in self._counted:
            self._on_change()

    def has(self, uid: str) -> bool:
        return uid in self.reflector.objects


class ClusterView:
    """Warmlet nodes, their lease freshness and usage (bound + assumed pods)."""

    def __init__(
        self,
        client: KubeClient,
        node_labels: Mapping[str, str],
        lease_poll_seconds: float = 2.0,
        assume_ttl_seconds: float = 60.0,
        steer_ttl_seconds: float = 30.0,
    ) -> None:
        self.client = client
        self.node_labels = dict(node_labels)
        self.lease_poll_seconds = lease_poll_seconds
        self.assume_ttl = assume_ttl_seconds
        self.nodes = Reflector(
            client,
            "/api/v1/nodes",
            self._node_event,
            params={"labelSelector": label_selector(node_labels)},
            name="placement-nodes",
        )
        self.leases: dict[str, JSON] = {}
        self.pods: dict[str, NodePods] = {}
        self._pod_tasks: dict[str, asyncio.Task[None]] = {}
        # pod uid → (node, request, monotonic time assumed)
        self.assumed: dict[str, tuple[str, Resources, float]] = {}
        # admission id → request of pods the webhook steered that are not bound yet
        self.steered: TTLCache[str, Resources] = TTLCache(100_000, ttl=steer_ttl_seconds)
        self.changed = asyncio.Event()  # set when capacity may have been freed or nodes changed
        self._tg: asyncio.TaskGroup | None = None
        self.synced = asyncio.Event()

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.nodes.run(), name="placement-nodes")
                tg.create_task(self._poll_leases(), name="placement-leases")
                await self.nodes.synced.wait()
                await self._wait_pods_synced()
                self.synced.set()
        finally:
            self._tg = None
            for t in self._pod_tasks.values():
                t.cancel()

    async def _wait_pods_synced(self, within: float = 30.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(p.reflector.synced.wait() for p in list(self.pods.values()))), within
            )

    def _node_event(self, etype: str, node: JSON) -> None:
        name = node["metadata"]["name"]
        if etype == "DELETED":
            task = self._pod_tasks.pop(name, None)
            if task is not None:
                task.cancel()
            self.pods.pop(name, None)
            self.leases.pop(name, None)
        elif name not in self.pods and self._tg is not None:
            np = NodePods(self.client, name, self.changed.set, self._steered_seen)
            self.pods[name] = np
            self._pod_tasks[name] = self._tg.create_task(np.reflector.run(), name=f"placement-pods-{name}")
        self.changed.set()

    async def _poll_leases(self) -> None:
        await periodic(
            self._read_leases,
            self.lease_poll_seconds,
            backoff=API_BACKOFF,
            on_error=lambda e, _: log.warning("placement lease poll error err=%r", e),
        )

    async def _read_leases(self) -> None:
        for name in list(self.pods):
            try:
                self.leases[name] = await self.client.get(
                    f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
                )
            except ApiError as e:
                if not e.not_found:
                    raise
                self.leases.pop(name, None)

    # ------------------------------------------------------------------ reading
    def node_names(self) -> set[str]:
        return {o["metadata"]["name"] for o in self.nodes.objects.values()}

    def views(self, now: float | None = None) -> list[NodeView]:
        """NodeViews with usage = pods seen bound + pods assumed by the binder."""
        now = time.time() if now is None else now
        self._expire_assumed()
        extra: dict[str, Resources] = {}
        for uid, (target, req, _) in self.assumed.items():
            np = self.pods.get(target)
            if np is not None and np.has(uid):
                continue
            extra[target] = extra.get(target, Resources()) + req
        out = []
        for node in self.nodes.objects.values():
            name = node["metadata"]["name"]
            np = self.pods.get(name)
            used = (np.used if np is not None else Resources()) + extra.get(name, Resources())
            out.append(node_view(node, self.leases.get(name), used, now))
        return out

    def _steered_seen(self, admission_id: str) -> None:
        self.steered.pop(admission_id, None)

    def steer(self, admission_id: str, req: Resources) -> None:
        """The webhook sent a pod here; count it until it shows up bound (or the TTL passes)."""
        self.steered[admission_id] = req

    def pending_steered(self) -> Resources:
        total = Resources()
        for req in list(self.steered.values()):
            total = total + req
        return total

    def assume(self, uid: str, node: str, req: Resources) -> None:
        self.assumed[uid] = (node, req, time.monotonic())

    def forget(self, uid: str) -> None:
        self.assumed.pop(uid, None)

    def _expire_assumed(self) -> None:
        now = time.monotonic()
        for uid, (node, _, t) in list(self.assumed.items()):
            np = self.pods.get(node)
            if now - t > self.assume_ttl or (np is not None and np.has(uid)):
                del self.assumed[uid]
