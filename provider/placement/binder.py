"""The fast binder: a scheduler for pods that name warmlet's scheduler.

Why: kube-scheduler binds one pod per scheduling cycle; a burst of thousands of Job pods at
00:00 queues behind it. Pods that say ``schedulerName: warmlet-scheduler`` only ever go to
warmlet nodes, where every node is alike, so choosing a node is a capacity check: the binder
takes every pending pod it has (up to ``batch_size``), assigns nodes in memory against the
nodes' free capacity (pods + CPU/memory requests vs allocatable, counting its own in-flight
bindings), then POSTs the Bindings in parallel with bounded concurrency.

Like kube-scheduler it writes a ``Scheduled`` event per bound pod, and for a pod no node can take
a ``PodScheduled=False`` condition (reason ``Unschedulable``) plus a ``FailedScheduling`` event;
such pods are retried when capacity frees up or after ``retry_seconds``. A Binding answered
409 (already bound — by another binder replica, or by hand) counts as done: binding is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

from common.retry import Backoff, periodic
from provider.config import BinderConfig
from provider.kubeclient import STRATEGIC_MERGE_PATCH, ApiError, KubeClient
from provider.placement.metrics import BINDER_ERRORS, BINDING_LATENCY, BINDINGS
from provider.placement.policy import NodeView, choose_node, pod_request
from provider.placement.view import ClusterView
from provider.reflector import Reflector
from provider.timefmt import rfc3339

log = logging.getLogger(__name__)
JSON = dict[str, Any]

# a pod whose Binding failed is retried after 1 s, 2 s, 4 s ... up to 30 s (no jitter)
BIND_RETRY = Backoff(base=0.5, cap=30.0, jitter=0.0)
# a failed scheduling pass (a bug, not an API error: those are per pod) is retried after a second
PASS_RETRY = Backoff(base=1.0, cap=1.0, factor=1.0, jitter=0.0)
IDLE_SECONDS = 3600.0  # with nothing pending the loop sleeps until a pod arrives (it wakes the loop)
BURST_SETTLE_SECONDS = 0.005  # let a burst's watch events land before a pass: bigger batches


def binding_body(pod: Mapping[str, Any], node: str) -> JSON:
    meta = pod.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


def unschedulable_patch(message: str, now: float) -> JSON:
    """PodScheduled=False as kube-scheduler writes it (strategic merge keys conditions by type)."""
    return {
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastProbeTime": None,
                    "lastTransitionTime": rfc3339(now),
                }
            ]
        }
    }


class EventSink:
    """core/v1 Events from the scheduler's identity, sent by a few workers; dropped when full."""

    def __init__(self, client: KubeClient, component: str, workers: int = 8, size: int = 20000) -> None:
        self.client, self.component, self.workers = client, component, workers
        self.queue: asyncio.Queue[tuple[JSON, str, str, str]] = asyncio.Queue(size)

    def record(self, pod: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = pod.get("metadata") or {}
        ref = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta.get("name", ""),
            "namespace": meta.get("namespace", ""),
            "uid": meta.get("uid", ""),
        }
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait((ref, type_, reason, message))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for i in range(self.workers):
                tg.create_task(self._worker(), name=f"binder-events-{i}")

    async def _worker(self) -> None:
        while True:
            ref, type_, reason, message = await self.queue.get()
            now = rfc3339(time.time())
            body = {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"generateName": f"{ref['name']}.", "namespace": ref["namespace"]},
                "involvedObject": ref,
                "reason": reason,
                "message": message[:1024],
                "type": type_,
                "source": {"component": self.component},
                "reportingComponent": self.component,
                "reportingInstance": self.component,
                "action": "Binding" if reason == "Scheduled" else "Scheduling",
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
            try:
                await self.client.post(f"/api/v1/namespaces/{ref['namespace']}/events", body)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # events are best effort
                BINDER_ERRORS.labels(verb="event").inc()
                log.debug("binder event not recorded reason=%s err=%r", reason, e)


@dataclasses.dataclass
class _Pending:
    pod: JSON
    first_seen: float
    next_try: float = 0.0
    reported: str = ""  # last unschedulable message written to the pod
    failures: int = 0


class FastBinder:
    """Watches unbound pods of ``scheduler_name`` and binds them in parallel batches."""

    def __init__(
        self,
        client: KubeClient,
        view: ClusterView,
        cfg: BinderConfig,
        lease_grace_seconds: float = 60.0,
        events_client: KubeClient | None = None,
        taint_key: str = "virtual-kubelet.io/provider",
    ) -> None:
        self.client = client
        self.taint_key = taint_key
        self.view = view
        self.cfg = cfg
        self.grace = lease_grace_seconds
        self.events = EventSink(events_client or client, cfg.scheduler_name)
        self.reflector = Reflector(
            client,
            "/api/v1/pods",
            self._event,
            params={"fieldSelector": f"spec.schedulerName={cfg.scheduler_name},spec.nodeName="},
            name="binder-pods",
        )
        self.pending: dict[str, _Pending] = {}
        self._inflight: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[bool]] = set()
        self._sem = asyncio.Semaphore(cfg.concurrency)
        self.bound = 0

    def _event(self, etype: str, pod: JSON) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        spec = pod.get("spec") or {}
        # scheduling gates hold a pod back from every scheduler, this one included
        if (
            etype == "DELETED"
            or meta.get("deletionTimestamp")
            or spec.get("nodeName")
            or spec.get("schedulingGates")
        ):
            self.pending.pop(uid, None)
            return
        p = self.pending.get(uid)
        if p is None:
            self.pending[uid] = _Pending(pod, time.monotonic())
            self._wake.set()
        else:
            p.pod = pod

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.reflector.run(), name="binder-pods")
            tg.create_task(self.events.run(), name="binder-events")
            tg.create_task(self._capacity_wakeups(), name="binder-capacity")
            await self.view.synced.wait()
            tg.create_task(self._loop(), name="binder-loop")

    async def _capacity_wakeups(self) -> None:
        """Freed capacity (a pod on a warmlet node finished, a node came back) retries waiting pods."""
        while True:
            await self.view.changed.wait()
            self.view.changed.clear()
            if any(p.reported for p in self.pending.values()):
                for p in self.pending.values():
                    if p.reported:
                        p.next_try = min(p.next_try, time.monotonic() + 1.0)
                self._wake.set()
            await asyncio.sleep(1.0)  # at most one capacity-triggered retry per second

    async def _loop(self) -> None:
        try:
            await self._loop_inner()
        finally:
            for t in list(self._tasks):
                t.cancel()

    async def _loop_inner(self) -> None:
        await periodic(
            self._pass,
            self._until_due,
            wake=self._wake,
            wait_first=True,
            backoff=PASS_RETRY,
            on_error=self._pass_failed,
        )

    def _until_due(self) -> float:
        """Seconds until the earliest retry of a pod not being bound (woken sooner by new pods)."""
        due = [p.next_try for uid, p in self.pending.items() if uid not in self._inflight]
        return max(0.05, min(due) - time.monotonic()) if due else IDLE_SECONDS

    async def _pass(self) -> None:
        self._wake.clear()
        await asyncio.sleep(BURST_SETTLE_SECONDS)
        await self.schedule_once(wait=False)

    def _pass_failed(self, e: Exception, failures: int) -> None:
        BINDER_ERRORS.labels(verb="loop").inc()
        log.error("binder pass failed failures=%d err=%r", failures, e, exc_info=e)

    async def schedule_once(self, wait: bool = True) -> int:
        """One pass: assign due pending pods to nodes and bind them in parallel.

        With ``wait=False`` (the loop) the Bindings proceed in the background, bounded by the
        semaphore, so pods arriving meanwhile do not queue behind a batch. Returns the pods
        bound (``wait``) or the pods handed to a binding (not ``wait``).
        """
        now = time.monotonic()
        batch = sorted(
            (p for uid, p in self.pending.items() if uid not in self._inflight and p.next_try <= now),
            key=lambda p: p.first_seen,
        )[: self.cfg.batch_size]
        if not batch:
            return 0
        nodes: dict[str, NodeView] = {n.name: n for n in self.view.views()}
        jobs = []
        for p in batch:
            need = pod_request(p.pod)
            node, why = choose_node(p.pod, need, list(nodes.values()), self.grace, self.taint_key)
            uid = p.pod["metadata"]["uid"]
            self._inflight.add(uid)
            if node is None:
                jobs.append(self._unschedulable(p, why or "no warmlet node"))
                continue
            nodes[node.name] = dataclasses.replace(node, used=node.used + need)
            self.view.assume(uid, node.name, need)
            jobs.append(self._bind(p, node.name))
        if not wait:
            for job in jobs:
                task = asyncio.create_task(job)
                self._tasks.add(task)
                task.add_done_callback(self._done)
            return len(jobs)
        results = await asyncio.gather(*jobs)
        return sum(1 for r in results if r)

    def _done(self, task: asyncio.Task[bool]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            BINDER_ERRORS.labels(verb="task").inc()
            log.warning("binding task failed err=%r", task.exception())
        if len(self.pending) > len(self._inflight):  # some pod waits for a pass
            self._wake.set()

    async def _bind(self, p: _Pending, node: str) -> bool:
        pod = p.pod
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        try:
            async with self._sem:
                await self.client.post(
                    f"/api/v1/namespaces/{ns}/pods/{name}/binding", binding_body(pod, node)
                )
        except ApiError as e:
            self.view.forget(uid)
            if e.conflict:  # already bound (another binder, or by hand): nothing left to do
                BINDINGS.labels(result="conflict").inc()
                log.info("binding conflict ns=%s pod=%s err=%s", ns, name, e.message)
                self.pending.pop(uid, None)
            elif e.not_found:
                BINDINGS.labels(result="gone").inc()
                self.pending.pop(uid, None)
            else:
                self._retry_later(p, "bind", e)
            return False
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.view.forget(uid)
            self._retry_later(p, "bind", e)
            return False
        finally:
            self._inflight.discard(uid)
        BINDINGS.labels(result="bound").inc()
        BINDING_LATENCY.observe(time.monotonic() - p.first_seen)
        self.bound += 1
        self.pending.pop(uid, None)
        self.events.record(pod, "Normal", "Scheduled", f"Successfully assigned {ns}/{name} to {node}")
        return True

    def _retry_later(self, p: _Pending, verb: str, e: Exception) -> None:
        BINDINGS.labels(result="error").inc()
        BINDER_ERRORS.labels(verb=verb).inc()
        p.failures += 1
        p.next_try = time.monotonic() + BIND_RETRY.delay(p.failures)
        meta = p.pod["metadata"]
        log.warning(
            "binding failed ns=%s pod=%s failures=%d err=%r", meta["namespace"], meta["name"], p.failures, e
        )

    async def _unschedulable(self, p: _Pending, message: str) -> bool:
        meta = p.pod["metadata"]
        uid = meta["uid"]
        try:
            BINDINGS.labels(result="unschedulable").inc()
            p.next_try = time.monotonic() + self.cfg.retry_seconds
            if p.reported == message:
                return False
            async with self._sem:
                await self.client.patch(
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                    unschedulable_patch(message, time.time()),
                    content_type=STRATEGIC_MERGE_PATCH,
                )
            p.reported = message
            self.events.record(p.pod, "Warning", "FailedScheduling", message)
            log.info("pod unschedulable ns=%s pod=%s msg=%s", meta["namespace"], meta["name"], message)
        except ApiError as e:
            if e.not_found:
                self.pending.pop(uid, None)
            else:
                BINDER_ERRORS.labels(verb="status").inc()
                log.warning("unschedulable status not written pod=%s err=%s", meta["name"], e)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            BINDER_ERRORS.labels(verb="status").inc()
            log.warning("unschedulable status not written pod=%s err=%r", meta["name"], e)
        finally:
            self._inflight.discard(uid)
        return False
