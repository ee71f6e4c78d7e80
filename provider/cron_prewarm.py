"""CronJob prewarming: warm sandboxes for a CronJob's pods shortly before it fires.

Lists CronJobs periodically, computes each one's next firing with croniter (in its
timeZone), and ``pool.cron_lead_seconds`` before it asks the backend to prewarm as many
sandboxes as the Job runs in parallel, under the workload key its pods will get
(keyed by the CronJob, see provider.workload). Only CronJobs whose pods would land on
this node (nodeSelector matches, taint tolerated) are prewarmed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter  # type: ignore[import-untyped,unused-ignore]

from common.clock import SYSTEM, Clock
from common.retry import SLOW_BACKOFF, periodic
from provider.config import PodConfig, PoolConfig
from provider.kubeclient import KubeClient
from provider.metrics import PREWARMS
from provider.pods.pull_secrets import image_credentials
from provider.podspec import sandbox_spec
from provider.resolve_source import ApiObjectSource, ObjectSource
from provider.scheduling import selects_node, tolerates
from provider.workload import cronjob_key
from sandbox.backend import Backend, PodSandboxSpec, Prewarmer, RegistryCredential

log = logging.getLogger(__name__)
JSON = dict[str, Any]

# CronJobs prewarmed at once by one tick (each makes its sandboxes and pulls its images).
PREWARM_CONCURRENCY = 8
TICK_SECONDS = 1.0  # how often due CronJobs are looked for


def next_fire(cronjob: Mapping[str, Any], now: float) -> float | None:
    """Epoch seconds of the next scheduled run after ``now``; None if suspended or invalid."""
    spec = cronjob.get("spec") or {}
    if spec.get("suspend"):
        return None
    schedule = spec.get("schedule", "")
    tz_name = spec.get("timeZone")
    try:
        tz = ZoneInfo(tz_name) if tz_name else UTC
        it = croniter(schedule, datetime.fromtimestamp(now, tz))
        nxt: datetime = it.get_next(datetime)
    except Exception:
        return None
    return nxt.timestamp()


def targets_node(
    pod_spec: Mapping[str, Any], node_labels: Mapping[str, str], taints: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether pods of this template may be scheduled here (nodeName, nodeSelector, required node
    affinity, taints)."""
    name = node_labels.get("kubernetes.io/hostname", "")
    if pod_spec.get("nodeName") and pod_spec.get("nodeName") != name:
        return False
    if not selects_node(pod_spec, node_labels, name):
        return False
    tolerations = list(pod_spec.get("tolerations") or [])
    return all(tolerates(tolerations, t) for t in taints if t.get("effect") in ("NoSchedule", "NoExecute"))


def template_pod(cronjob: Mapping[str, Any]) -> JSON:
    """A pod as the CronJob's template would make it (what its sandbox and pull secrets come from)."""
    meta = cronjob.get("metadata") or {}
    job_spec = ((cronjob.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
    template = job_spec.get("template") or {}
    return {
        "metadata": {
            "name": f"{meta.get('name', '')}-prewarm",
            "namespace": meta.get("namespace", "default"),
            "uid": "",
            "labels": dict((template.get("metadata") or {}).get("labels") or {}),
        },
        "spec": template.get("spec") or {},
    }


def prewarm_spec(cronjob: Mapping[str, Any], pods: PodConfig) -> tuple[PodSandboxSpec, int]:
    """The sandbox spec of the CronJob's future pods and how many run at once."""
    job_spec = ((cronjob.get("spec") or {}).get("jobTemplate") or {}).get("spec") or {}
    spec = sandbox_spec(template_pod(cronjob), cronjob_key(cronjob), pods.cluster_dns, pods.cluster_domain)
    count = int(job_spec.get("parallelism", 1) or 1)
    return spec, max(1, count)


class CronPrewarmer:
    def __init__(
        self,
        pool: PoolConfig,
        pods: PodConfig,
        client: KubeClient,
        backend: Backend,
        node_labels: Mapping[str, str],
        taints: Sequence[Mapping[str, Any]],
        relist_seconds: float = 15.0,
        concurrency: int = PREWARM_CONCURRENCY,
        clock: Clock = SYSTEM,
        source: ObjectSource | None = None,
    ) -> None:
        self.pool = pool
        # pull secrets of the templates: prewarm pulls use the credentials the pods will have
        self.source = source if source is not None else ApiObjectSource(client)
        self.pods = pods
        self.clock = clock
        self.client = client
        self.backend = backend
        self.node_labels = dict(node_labels)
        self.taints = taints
        self.relist_seconds = relist_seconds
        self.concurrency = max(1, concurrency)
        self.cronjobs: dict[str, JSON] = {}
        self._done: dict[str, float] = {}  # cronjob uid -> firing time already prewarmed
        self._last_list: float | None = None  # monotonic time of the last list (None: never)

    def due(self, now: float) -> list[tuple[JSON, float]]:
        """CronJobs whose next firing is within the lead time and not yet prewarmed."""
        lead = self.pool.cron_lead_seconds
        out = []
        for uid, cj in self.cronjobs.items():
            fire = next_fire(cj, now)
            if fire is None or fire - now > lead or self._done.get(uid) == fire:
                continue
            template = ((cj.get("spec") or {}).get("jobTemplate") or {}).get("spec", {}).get("template") or {}
            if not targets_node(template.get("spec") or {}, self.node_labels, self.taints):
                continue
            out.append((cj, fire))
        return out

    async def tick(self, now: float) -> int:
        """Prewarm every CronJob due now, ``concurrency`` at a time; returns the sandboxes made.

        Concurrently, not one after another: K CronJobs sharing one instant would otherwise be
        prewarmed back to back (K sandboxes in a row, 200 took ~25 s of a 30 s lead).
        """
        backend = self.backend
        if not isinstance(backend, Prewarmer):
            return 0
        due = []
        for cj, fire in self.due(now):
            spec, count = prewarm_spec(cj, self.pods)
            self._done[cj["metadata"]["uid"]] = fire
            due.append((cj, spec, count, fire))
        if not due:
            return 0
        sem = asyncio.Semaphore(self.concurrency)

        async def one(cj: JSON, spec: PodSandboxSpec, count: int, fire: float) -> int:
            async with sem:
                try:
                    spec.pull_credentials = await self._credentials(cj, spec)
                    made = int(await backend.prewarm(spec, count) or 0)
                except Exception as e:
                    log.warning("prewarm failed cronjob=%s err=%r", spec.workload_key, e)
                    return 0
            PREWARMS.inc(made)
            log.info("prewarmed cronjob key=%s count=%d fires_in=%.1fs", spec.workload_key, made, fire - now)
            return made

        return sum(await asyncio.gather(*(one(*d) for d in due)))

    async def _credentials(self, cronjob: JSON, spec: PodSandboxSpec) -> dict[str, list[RegistryCredential]]:
        """The template's pull credentials per image; none (anonymous pulls) when unreadable."""
        try:
            return await image_credentials(self.source, template_pod(cronjob), spec.images)
        except Exception as e:
            log.warning("prewarm pull secrets unreadable cronjob=%s err=%r", spec.workload_key, e)
            return {}

    async def relist(self) -> None:
        page = await self.client.list_all("/apis/batch/v1/cronjobs")
        self.cronjobs = {c["metadata"]["uid"]: c for c in page.get("items") or []}
        self._done = {k: v for k, v in self._done.items() if k in self.cronjobs}

    async def run(self) -> None:
        if not self.pool.cron_prewarm or not isinstance(self.backend, Prewarmer):
            log.info("cron prewarm disabled (config or backend without prewarm)")
            return
        await periodic(
            self._step,
            TICK_SECONDS,
            clock=self.clock,
            backoff=SLOW_BACKOFF,
            on_error=lambda e, n: log.warning("cron prewarm loop failed attempt=%d err=%r", n, e),
        )

    async def _step(self) -> None:
        """Relist when due, then prewarm what is due now."""
        if self._last_list is None or self.clock.monotonic() - self._last_list >= self.relist_seconds:
            await self.relist()
            self._last_list = self.clock.monotonic()
        await self.tick(self.clock.time())
