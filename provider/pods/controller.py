"""Wires the pod informer, the work queue, the pod worker and runtime events together.

On start it waits for the first list, then cleans up what warmlet owns in the runtime but
the API no longer has (pods deleted while warmlet was down), so restarts neither leak
nor duplicate sandboxes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Collection, Mapping
from typing import Any

from common.clock import SYSTEM, Clock
from common.retry import periodic
from provider.config import NodeConfig, PodConfig
from provider.events import EventRecorder, pod_events_policy
from provider.kubeclient import ApiError, KubeClient
from provider.metrics import POD_SYNC_SECONDS, POD_SYNCS, PODS_BY_PHASE
from provider.pods.informer import PodInformer
from provider.pods.queue import WorkQueue
from provider.pods.worker import PodWorker
from provider.resolve_source import ApiObjectSource
from provider.resolve_volumes import release_memory_root, remove_orphan_pod_dirs
from provider.service_env import ServiceInformer
from provider.workload import OwnerResolver
from sandbox.backend import Backend, Reconciler

log = logging.getLogger(__name__)
JSON = dict[str, Any]

PHASE_GAUGE_SECONDS = 5.0  # how often the pods-by-phase gauge is refreshed


class PodController:
    def __init__(
        self,
        node: NodeConfig,
        pods: PodConfig,
        client: KubeClient,
        backend: Backend,
        recorder: EventRecorder,
        node_allocatable: Mapping[str, str],
        resync_seconds: float = 60.0,
        clock: Clock = SYSTEM,
        node_names: Collection[str] = (),  # a multi-node process: all its nodes (default: node.name)
    ) -> None:
        self.client = client
        self.backend = backend
        self.clock = clock
        # kubelet's per-pod events where containers are processes; Warnings only on a simulated
        # node unless pods.pod_events says otherwise (docs/configuration.md)
        recorder.pod_events = pod_events_policy(pods.pod_events, backend.capabilities.runs_processes)
        self.queue = WorkQueue(self._sync, workers=pods.workers, clock=clock)
        self.informer = PodInformer(client, node_names or node.name, self.queue.add)
        self.owners = OwnerResolver(self._fetch, clock=clock)
        self.services = ServiceInformer(client)  # service-link env vars (provider/service_env.py)
        self.worker = PodWorker(
            pods,
            node.internal_ip,
            client,
            backend,
            self.informer.get,
            recorder,
            self.owners,
            ApiObjectSource(client, services=self.services),
            node_allocatable,
            clock,
            on_probe_change=self.queue.add,
        )
        self.resync_seconds = resync_seconds
        self._last_resync = clock.monotonic()
        self.ready = asyncio.Event()
        backend.subscribe(self._runtime_changed)

    def _runtime_changed(self, uid: str) -> None:
        try:
            self.queue.add(uid)
        except RuntimeError:  # called from a thread without a loop: hop onto ours
            pass

    async def _fetch(self, path: str) -> JSON | None:
        try:
            return await self.client.get(path)
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def _sync(self, uid: str) -> float | None:
        t0 = time.perf_counter()
        try:
            result = await self.worker.sync(uid)
            POD_SYNCS.labels(result="ok").inc()
            return result
        except Exception:
            POD_SYNCS.labels(result="error").inc()
            raise
        finally:
            POD_SYNC_SECONDS.observe(time.perf_counter() - t0)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.informer.run(), name="pod-informer")
            tg.create_task(self.services.run(), name="service-informer")
            await self.informer.synced.wait()
            await self.cleanup_orphans()
            tg.create_task(self.queue.run(), name="pod-workers")
            tg.create_task(self.worker.probes.run(), name="probes")
            tg.create_task(self.worker.holds.wave.run(), name="start-wave")
            tg.create_task(self.worker.status.queue.run(), name="status-writes")  # pods.status_qps
            self.ready.set()
            tg.create_task(self._periodic(), name="pod-resync")

    async def cleanup_orphans(self) -> int:
        """Release sandboxes whose pods no longer exist in the API; returns how many."""
        live = set(self.informer.pods)
        if isinstance(self.backend, Reconciler):
            try:
                await self.backend.reconcile(live)
            except Exception:
                log.exception("backend reconcile failed")
        orphans = [s for s in await self.backend.list_sandboxes() if s.pod_uid and s.pod_uid not in live]
        for s in orphans:
            log.info("cleaning orphan sandbox pod_uid=%s pod=%s/%s", s.pod_uid, s.namespace, s.name)
            await self.worker.cleanup(s.pod_uid)
        # Volume dirs (tmpfs mounts with secrets included) of pods deleted while warmlet was down.
        dirs = await asyncio.to_thread(
            remove_orphan_pod_dirs, self.worker.volumes_dir, live, self.worker.memory_dir
        )
        if dirs:
            log.info("removed orphan pod volume dirs count=%d", len(dirs))
        return len(orphans)

    async def _periodic(self) -> None:
        """Phase gauge every few seconds; a full resync of every pod now and then."""
        self._last_resync = self.clock.monotonic()
        await periodic(self._gauge_and_resync, PHASE_GAUGE_SECONDS, clock=self.clock, wait_first=True)

    async def _gauge_and_resync(self) -> None:
        phases = Counter((p.get("status") or {}).get("phase", "Pending") for p in self.informer.pods.values())
        for phase in ("Pending", "Running", "Succeeded", "Failed", "Unknown"):
            PODS_BY_PHASE.labels(phase=phase).set(phases.get(phase, 0))
        if self.clock.monotonic() - self._last_resync >= self.resync_seconds:
            self._last_resync = self.clock.monotonic()
            for uid in list(self.informer.pods):
                self.queue.add(uid)

    async def quiesce(self, within: float) -> None:
        """Graceful stop: no pod sync starts any more; syncs in flight may finish (up to ``within``)."""
        busy = self.queue.in_flight
        drained = await self.queue.pause(within)
        log.info("pod workers paused in_flight=%d drained=%s queued=%d", busy, drained, len(self.queue))

    def close(self) -> None:
        self.queue.close()
        # the tmpfs warmlet mounted for memory-backed volumes, if no pod's volumes are left in it
        release_memory_root(self.worker.volumes_dir, self.worker.memory_dir)
