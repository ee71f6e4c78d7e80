"""The Nodes of one process: one :class:`provider.node.NodeController` per node, one Node watch.

A warmlet process runs one node, or with ``nodes:`` (simulated backend only) many: each has its
own Node object (name, labels, capacity), its own Lease renewals and status heartbeats, all on the
process's one KubeClient and event loop. What would cost one API watch per node is shared:

- the Nodes: one watch, field-selected by name for a single node, else every Node with the ones
  not of this process dropped on arrival (their key is None: never stored, never delivered);
- the pods: one pod informer for the process (:func:`provider.node_scope.pod_scope`):
  ``spec.nodeName=<name>`` for a single node (what kubelet does), else every bound pod
  (``spec.nodeName!=``), filtered in process.

Why one pod watch: a watch per node is a held HTTP stream, a goroutine and a watch-cache watcher
on the API server and a connection plus a task here; thousands of nodes would need thousands of
them (and as many initial LISTs). One cluster-wide watch is one stream whose only waste is the
pods of nodes this process does not run, which on a cluster of simulated nodes are few. KWOK makes
the same choice.

Lease renewals and periodic status writes are spread over their intervals (``lease_phases``,
``status_phases``), so thousands of nodes do not write in one burst every ten (sixty) seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from common.clock import SYSTEM, Clock
from provider.config import NodeConfig
from provider.events import EventRecorder
from provider.kubeclient import KubeClient
from provider.node import NodeController
from provider.node_scope import lease_phases, node_name, node_scope, status_phases
from provider.reflector import Reflector
from sandbox.backend import Backend

log = logging.getLogger(__name__)
JSON = dict[str, Any]


# ---------------------------------------------------------------------------------------- I/O


class NodeFleet:
    """Registers and keeps every node of the process; ``registered`` when all are."""

    def __init__(
        self,
        cfgs: Sequence[NodeConfig],
        client: KubeClient,
        lease_client: KubeClient,
        backend: Backend,
        kubelet_port: int,
        recorder: EventRecorder | None = None,
        clock: Clock = SYSTEM,
    ) -> None:
        if not cfgs:
            raise ValueError("a node fleet needs at least one node")
        self.client = client
        self.clock = clock
        n = len(cfgs)
        self.controllers = [
            NodeController(
                c,
                client,
                lease_client,
                backend,
                kubelet_port,
                recorder,
                clock=clock,
                own_watch=False,
                lease_phase=lease,
                status_phase=status,
            )
            for c, lease, status in zip(
                cfgs,
                lease_phases(n, min(c.lease_renew_interval_seconds for c in cfgs)),
                status_phases(n, min(c.status_update_interval_seconds for c in cfgs)),
                strict=True,
            )
        ]
        self.by_name = {c.cfg.name: c for c in self.controllers}
        self.registered = asyncio.Event()

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    @property
    def primary(self) -> NodeController:
        """The first node: the one named where a single name is needed (the kubelet API's)."""
        return self.controllers[0]

    def set_kubelet_port(self, port: int) -> None:
        """The port every Node advertises (daemonEndpoints): the process's one kubelet API."""
        for c in self.controllers:
            c.kubelet_port = port

    def _listed(self, nodes: Mapping[str, JSON]) -> None:
        for name, c in self.by_name.items():
            c.node_listed({name: nodes[name]} if name in nodes else {})

    def _event(self, etype: str, node: JSON) -> None:
        c = self.by_name.get(node_name(node))
        if c is not None:
            c.node_event(etype, node)

    async def _watch(self) -> None:
        """The one Node watch: a deleted Node is registered again at once (NodeController).

        Started once every node is registered (as a single node's own watch is): its first list
        would find them missing and have each registered twice."""
        await self.registered.wait()
        params, key = node_scope(self.by_name)
        await Reflector(
            self.client,
            "/api/v1/nodes",
            self._event,
            params=params,
            key=key,
            replay_list=False,
            clock=self.clock,
            name="nodes",
            on_list=self._listed,
        ).run()

    async def _all_registered(self) -> None:
        for c in self.controllers:
            await c.registered.wait()
        self.registered.set()
        log.info("nodes registered count=%d", len(self.controllers))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch(), name="node-watch")
            for c in self.controllers:
                tg.create_task(c.run(), name=f"node-{c.cfg.name}")
            tg.create_task(self._all_registered(), name="nodes-registered")

    async def mark_stopped(self, running: Mapping[str, int]) -> None:
        """Graceful stop: every registered Node says Ready=False (WarmletStopped), with its pods."""
        results = await asyncio.gather(
            *(c.mark_stopped(running.get(name, 0)) for name, c in self.by_name.items()),
            return_exceptions=True,
        )
        for name, r in zip(self.by_name, results, strict=True):
            if isinstance(r, BaseException):
                log.warning("could not mark the node stopped name=%s err=%r", name, r)
