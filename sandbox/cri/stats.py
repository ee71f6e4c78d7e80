"""Usage statistics of the node and of this warmlet's pods (the kubelet summary API's data), and
the count of OOM-killed containers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping

from cachetools import LRUCache

from proto import cri_pb2 as pb
from sandbox import metrics
from sandbox.backend import BackendError, NodeUsage, PodSandboxSpec, PodUsage
from sandbox.cri import host
from sandbox.cri import mapping as m
from sandbox.cri import stats_mapping as sm
from sandbox.cri.client import CriApi, CriCallError
from sandbox.cri.context import CriContext
from sandbox.cri.facts import SandboxFacts
from sandbox.pool import SandboxRecord

log = logging.getLogger("warmlet.cri")


class OomCounter:
    """``warmlet_container_oom_kills_total``: each OOM-killed container counted once, whether the
    PLEG or a pod sync sees it first (a pod sync may see the exit, and the pod's release remove
    the container, between two relists)."""

    def __init__(self, client: CriApi, maxsize: int = 8192) -> None:
        self.client = client
        self._counted: LRUCache[str, bool] = LRUCache(maxsize=maxsize)

    async def check(self, container_ids: list[str]) -> None:
        """Newly exited containers (the PLEG's): one ContainerStatus each not yet counted."""

        async def one(cid: str) -> None:
            with contextlib.suppress(BackendError):
                self.note(cid, (await self.client.container_status(cid)).status)

        await asyncio.gather(*(one(c) for c in container_ids if c not in self._counted))

    def note(self, container_id: str, st: pb.ContainerStatus) -> None:
        if st.reason != "OOMKilled" or container_id in self._counted:
            return
        self._counted[container_id] = True
        metrics.OOM_KILLS.inc()
        log.warning(
            "container OOMKilled container=%s pod=%s/%s name=%s",
            container_id[:12],
            st.labels.get(m.K8S_POD_NAMESPACE, ""),
            st.labels.get(m.K8S_POD_NAME, ""),
            st.metadata.name,
        )


class CriStats:
    """``Backend.stats``: node usage from /proc, pod and container usage from the runtime."""

    def __init__(
        self,
        ctx: CriContext,
        facts: SandboxFacts,
        record_of: Callable[[str], SandboxRecord | None],
        specs: Mapping[str, PodSandboxSpec],
        log_path: Callable[[str, str, str, str, int], str],
    ) -> None:
        self.ctx = ctx
        self.facts = facts
        self.record_of = record_of  # pod uid -> its sandbox record (pods with a sandbox only)
        self.specs = specs  # pod uid -> the spec it acquired its sandbox with
        self.log_path = log_path
        self._start_times: dict[str, float] = {}  # container id -> started_at (seconds)
        self._node_cpu_prev: tuple[float, int] | None = None

    def node_usage(self) -> NodeUsage:
        now = self.ctx.clock.time()
        cpu = sm.parse_proc_stat(host.read_text("/proc/stat"))
        hz = os.sysconf("SC_CLK_TCK") or 100
        cpu_ns = cpu.total_jiffies * (1_000_000_000 // hz)
        nano_cores = 0
        if self._node_cpu_prev is not None:
            t_prev, ns_prev = self._node_cpu_prev
            if now > t_prev:
                nano_cores = int(max(0, cpu_ns - ns_prev) / (now - t_prev))
        self._node_cpu_prev = (now, cpu_ns)
        mem = sm.parse_meminfo(host.read_text("/proc/meminfo"))
        total = mem.get("MemTotal", 0)
        avail = mem.get("MemAvailable", 0)
        free = mem.get("MemFree", 0)
        log_dir = self.ctx.log_dir
        fs = os.statvfs(log_dir if os.path.isdir(log_dir) else "/")
        return NodeUsage(
            timestamp=now,
            start_time=cpu.btime,
            cpu_usage_core_nanoseconds=cpu_ns,
            cpu_usage_nano_cores=nano_cores,
            memory_working_set_bytes=max(0, total - avail),
            memory_usage_bytes=max(0, total - free),
            memory_available_bytes=avail,
            memory_rss_bytes=max(0, total - avail - mem.get("Cached", 0) + mem.get("Shmem", 0)),
            fs_capacity_bytes=fs.f_blocks * fs.f_frsize,
            fs_available_bytes=fs.f_bavail * fs.f_frsize,
            fs_used_bytes=(fs.f_blocks - fs.f_bfree) * fs.f_frsize,
        )

    async def _learn_start_times(self, container_ids: list[str]) -> None:
        """Start times of live containers (ListContainerStats lacks them); asked once per container."""
        live = set(container_ids)
        for cid in list(self._start_times):
            if cid not in live:
                del self._start_times[cid]

        async def one(cid: str) -> None:
            try:
                st = (await self.ctx.client.container_status(cid)).status
            except CriCallError:
                return
            if st.started_at:
                self._start_times[cid] = st.started_at / 1e9

        await asyncio.gather(*(one(cid) for cid in live if cid not in self._start_times))

    async def stats(self) -> NodeUsage:
        node = await asyncio.to_thread(self.node_usage)
        try:
            all_stats = await self.ctx.client.list_container_stats(labels=self.ctx.selector)
        except CriCallError as e:
            log.warning("list container stats failed error=%s", e)
            all_stats = []
        await self._learn_start_times([s.attributes.id for s in all_stats])
        pods: dict[str, PodUsage] = {}
        for s in all_stats:
            labels = s.attributes.labels
            uid = m.pod_uid_of(labels)
            rec = self.record_of(uid)
            if not uid or rec is None:
                continue
            spec = self.specs.get(uid)
            ns = labels.get(m.K8S_POD_NAMESPACE, rec.namespace)
            name = labels.get(m.K8S_POD_NAME, rec.pod_name)
            cname = s.attributes.metadata.name or labels.get(m.K8S_CONTAINER_NAME, "")
            log_bytes = 0
            with contextlib.suppress(OSError):
                path = self.log_path(ns, name, uid, cname, s.attributes.metadata.attempt)
                log_bytes = os.stat(path).st_size
            cu = sm.container_usage_from_stats(
                s, start_time=self._start_times.get(s.attributes.id, 0.0), log_bytes=log_bytes
            )
            if cu is None:  # exited container: no live usage (kubelet omits it)
                continue
            pu = pods.get(uid)
            if pu is None:
                rx, tx = self.facts.net_counters(rec.sandbox_id)
                facts = self.facts.get(rec.sandbox_id)
                brx, btx = facts.net_baseline if facts else (0, 0)
                pu = pods[uid] = PodUsage(
                    uid=uid,
                    namespace=spec.namespace if spec else ns,
                    name=spec.name if spec else name,
                    start_time=rec.created_at,
                    timestamp=cu.timestamp or node.timestamp,
                    network_rx_bytes=max(0, rx - brx),
                    network_tx_bytes=max(0, tx - btx),
                )
            pu.containers.append(cu)
        node.pods = sorted(pods.values(), key=lambda p: (p.namespace, p.name))
        return node
