"""Node controller: register or take over the Node, keep its status fresh, recreate it if deleted.

Status is patched when a condition changes (backend health is polled every few seconds)
and at least every ``status_update_interval_seconds``; a watch on the Node notices its
deletion and registers it again at once. The Lease runs beside it (provider.lease).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from common.clock import SYSTEM, Clock
from common.retry import API_BACKOFF, periodic, retry
from provider.config import NodeConfig
from provider.events import NORMAL, WARNING, EventRecorder
from provider.kubeclient import MERGE_PATCH, STRATEGIC_MERGE_PATCH, ApiError, KubeClient
from provider.lease import LeaseKeeper
from provider.node_object import (
    conditions_summary,
    foreign_owner,
    node_labels,
    node_object,
    node_restriction_safe,
    node_status,
    node_taints,
    overwritten_by_others,
)
from provider.reflector import Reflector, strip_managed_fields
from sandbox.backend import Backend, BackendHealth

log = logging.getLogger(__name__)
JSON = dict[str, Any]


class NodeNameTaken(RuntimeError):
    """The Node of this name is another kubelet's or provider's: fatal, never retried."""


def merged_taints(existing: JSON, cfg: NodeConfig) -> list[JSON]:
    """Our provider taint replaces any with its key; taints others own (not-ready, ...) stay."""
    ours = node_taints(cfg)
    keep = [t for t in (existing.get("spec") or {}).get("taints") or [] if t.get("key") != cfg.taint_key]
    return keep + ours


class NodeController:
    def __init__(
        self,
        cfg: NodeConfig,
        client: KubeClient,
        lease_client: KubeClient,
        backend: Backend,
        kubelet_port: int,
        recorder: EventRecorder | None = None,
        health_interval: float = 5.0,
        clock: Clock = SYSTEM,
        own_watch: bool = True,
        lease_phase: float | None = None,
        status_phase: float = 0.0,
    ) -> None:
        """``own_watch=False``: a :class:`provider.node_fleet.NodeFleet` watches the Nodes of the
        process (one watch for all) and calls :meth:`node_listed` / :meth:`node_event`.
        ``lease_phase``: the wait between the first and second Lease renewal (spreads many nodes'
        renewals over the interval); ``status_phase``: how much sooner than the interval the first
        periodic status write is due (spreads many nodes' status writes likewise)."""
        self.cfg = cfg
        self.own_watch = own_watch
        self.clock = clock
        self.client = client
        self.backend = backend
        self.kubelet_port = kubelet_port
        self.recorder = recorder
        self.health_interval = health_interval
        self.node: JSON | None = None
        self.registered = asyncio.Event()
        self.lease = LeaseKeeper(
            lease_client,
            cfg.name,
            self.node_uid,
            cfg.lease_duration_seconds,
            cfg.lease_renew_interval_seconds,
            clock,
            phase=lease_phase,
        )
        self._last_summary: list[tuple[str, str, str]] = []
        self._last_update = 0.0
        self._wake = asyncio.Event()
        self._restricted = False  # the identity may not set kubernetes.io/role etc.
        self._status_phase = status_phase  # used once, at the first registration

    @property
    def path(self) -> str:
        return f"/api/v1/nodes/{self.cfg.name}"

    def node_uid(self) -> str:
        return str(((self.node or {}).get("metadata") or {}).get("uid", ""))

    async def health(self) -> BackendHealth:
        try:
            return await asyncio.wait_for(self.backend.health(), timeout=10)
        except Exception as e:
            return BackendHealth(ok=False, reason="HealthCheckFailed", message=repr(e))

    async def register(self) -> JSON:
        """Create the Node, or take over an existing one (labels, taints, status)."""
        health = await self.health()
        now = self.clock.time()
        try:
            existing = await self.client.get(self.path)
        except ApiError as e:
            if not e.not_found:
                raise
            existing = None
        if existing is None:
            body = node_object(self.cfg, health, now, self.kubelet_port)
            if self._restricted:
                body["metadata"]["labels"] = node_restriction_safe(body["metadata"]["labels"])
            try:
                node = await self.client.post("/api/v1/nodes", body)
            except ApiError as e:
                if e.status == 403 and not self._restricted:
                    log.warning("node labels forbidden (NodeRestriction?), retrying without restricted ones")
                    self._restricted = True
                    return await self.register()
                if not e.conflict:
                    raise
                return await self.register()  # raced with another writer: take it over
            node = await self.client.patch(
                self.path + "/status", {"status": body["status"]}, content_type=STRATEGIC_MERGE_PATCH
            )
            log.info("node registered name=%s uid=%s", self.cfg.name, node["metadata"]["uid"])
        else:
            other = foreign_owner(existing)
            if other is not None:  # several providers in one cluster: never hijack another's Node
                raise NodeNameTaken(
                    f"node {self.cfg.name} is registered by another kubelet or provider ({other}); "
                    "warmlet does not take it over: choose another node name"
                )
            labels = node_labels(self.cfg)
            if self._restricted:
                labels = node_restriction_safe(labels)
            try:
                await self.client.patch(
                    self.path,
                    {
                        "metadata": {"labels": labels},
                        "spec": {"taints": merged_taints(existing, self.cfg) or None},
                    },
                    content_type=MERGE_PATCH,
                )
            except ApiError as e:
                if e.status != 403 or self._restricted:
                    raise
                self._restricted = True
                return await self.register()
            status = node_status(self.cfg, health, now, self.kubelet_port, existing.get("status"))
            node = await self.client.patch(
                self.path + "/status", {"status": status}, content_type=STRATEGIC_MERGE_PATCH
            )
            log.info("node taken over name=%s uid=%s", self.cfg.name, node["metadata"]["uid"])
        self.node = node
        self._note_update(node, now - self._status_phase)
        self._status_phase = 0.0
        self.registered.set()
        if self.recorder is not None:
            self.recorder.record(self._ref(), NORMAL, "Starting", "Starting warmlet.")
            self.recorder.record(
                self._ref(),
                NORMAL,
                "NodeReady" if health.ok else "NodeNotReady",
                f"Node {self.cfg.name} status is now: {'NodeReady' if health.ok else 'NodeNotReady'}",
            )
        return node

    def _ref(self) -> JSON:
        meta = (self.node or {}).get("metadata") or {}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.cfg.name, "uid": meta.get("uid", "")},
        }

    def _note_update(self, node: JSON, now: float) -> None:
        strip_managed_fields(node)  # kept as self.node: thousands of nodes in one process add up
        self._last_summary = conditions_summary((node.get("status") or {}).get("conditions") or [])
        self._last_update = now

    async def update_status(self, force: bool = False) -> bool:
        """Patch the status if a condition changed or the interval elapsed; True if patched."""
        health = await self.health()
        now = self.clock.time()
        old = (self.node or {}).get("status") or {}
        status = node_status(self.cfg, health, now, self.kubelet_port, old)
        summary = conditions_summary(status["conditions"])
        due = now - self._last_update >= self.cfg.status_update_interval_seconds
        if not (force or due or summary != self._last_summary):
            return False
        if summary != self._last_summary and self.recorder is not None:
            self.recorder.record(
                self._ref(),
                NORMAL if health.ok else WARNING,
                "NodeReady" if health.ok else "NodeNotReady",
                f"Node {self.cfg.name} status is now: {'NodeReady' if health.ok else 'NodeNotReady'}",
            )
        try:
            node = await self.client.patch(
                self.path + "/status", {"status": status}, content_type=STRATEGIC_MERGE_PATCH
            )
        except ApiError as e:
            if e.not_found:
                log.warning("node disappeared, registering again name=%s", self.cfg.name)
                await self.register()
                return True
            raise
        self.node = node
        self._note_update(node, now)
        return True

    async def mark_stopped(self, pods_left_running: int) -> None:
        """Graceful stop (SIGTERM): Ready=False, reason WarmletStopped, saying what was left running.

        Like kubelet's graceful node shutdown ("node is shutting down"), the node stops being
        schedulable at once instead of after the lease expires; unlike it, pods are NOT killed: a
        restarted warmlet adopts their containers. Call after the status loop and lease have stopped.
        """
        if not self.registered.is_set():
            return
        msg = (
            f"warmlet stopped (SIGTERM); {pods_left_running} pods left running, "
            "adopted without restart when warmlet starts again"
        )
        health = await self.health()
        now = self.clock.time()
        old = (self.node or {}).get("status") or {}
        status = node_status(self.cfg, health, now, self.kubelet_port, old, stopped=msg)
        self.node = await self.client.patch(
            self.path + "/status", {"status": status}, content_type=STRATEGIC_MERGE_PATCH
        )
        log.info("node marked stopped name=%s pods_left_running=%d", self.cfg.name, pods_left_running)
        if self.recorder is not None:
            self.recorder.record(self._ref(), WARNING, "NodeNotReady", f"Node {self.cfg.name}: {msg}")

    async def _status_step(self) -> None:
        force = self._wake.is_set()
        self._wake.clear()
        if force:
            await self.register()
        else:
            await self.update_status()

    async def _status_loop(self) -> None:
        """Every ``health_interval`` (at once when woken): re-register if asked, else update."""
        await periodic(
            self._status_step,
            self.health_interval,
            clock=self.clock,
            wake=self._wake,
            wait_first=True,
            backoff=API_BACKOFF,
            on_error=lambda e, n: log.warning("node status update failed attempt=%d err=%r", n, e),
        )

    def node_listed(self, nodes: Mapping[str, JSON]) -> None:
        if not nodes:
            log.warning("node missing, registering again name=%s", self.cfg.name)
            self._wake.set()

    def node_event(self, etype: str, node: JSON) -> None:
        if etype == "DELETED":
            log.warning("node deleted, registering again name=%s", self.cfg.name)
            self._wake.set()
        elif etype == "MODIFIED" and overwritten_by_others(node, self._last_summary):
            log.warning("node conditions changed by another client, reporting again name=%s", self.cfg.name)
            self._last_summary = []  # the next health poll patches the status

    async def _watch_loop(self) -> None:
        """Notice the Node's deletion within a second instead of at the next update."""
        await Reflector(
            self.client,
            "/api/v1/nodes",
            self.node_event,
            params={"fieldSelector": f"metadata.name={self.cfg.name}"},
            replay_list=False,
            clock=self.clock,
            name="node",
            on_list=self.node_listed,
        ).run()

    async def run(self) -> None:
        await retry(
            self.register,
            API_BACKOFF,
            clock=self.clock,
            fatal=(NodeNameTaken,),
            on_error=lambda e, n: log.warning("node registration failed attempt=%d err=%r", n, e),
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.lease.run(), name="node-lease")
            tg.create_task(self._status_loop(), name="node-status")
            if self.own_watch:
                tg.create_task(self._watch_loop(), name="node-watch")
