"""One variant of the midnight burst: K CronJobs fire at one instant on one warmlet node.

Variants: ``no-prewarm`` (the pool is empty at the instant, the image cached), ``prewarm``
(schedule-aware prewarming, ``pool.cron_prewarm``, lead ``--lead-seconds``) and ``punctual``
(the CronJobs annotated ``warmlet.io/punctual: "true"``, the node run with ``punctual.enabled``:
warmlet pre-creates each Job ``--punctual-lead-seconds`` ahead, the pods are prepared to
PRECREATED and held, one start wave starts them at the instant; prewarming on, its lead the
punctual lead + ``--lead-seconds`` so the pool is full when the held pods arrive). Each variant
has its own namespace and its own ``warmlet run`` subprocess (bench/rbac_node.py).

Per pod, a client-side watch records wall-clock created / bound / Running and the pod's real start
(:func:`bench.midnight_figures.started_at`); after the burst the namespace's Jobs are counted per
CronJob (duplicates).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.common import bounded
from bench.harness import HOLD_COMMAND, Bed, NodeHandle, delete_namespace, owned_pod
from bench.midnight_figures import (
    SOURCE_ANNOTATION,
    better_start,
    daily_schedule,
    duplicate_jobs,
    next_boundary,
    started_at,
    variant_figures,
)
from bench.podwatch import PodTimes, watch_namespace_pods
from bench.rbac_node import warmlet_process
from provider.kubeclient import KubeClient
from provider.punctual.job import OPT_IN
from testbed.testing import create_namespace, pod_template, wait_for

log = logging.getLogger("bench.midnight_variants")
JSON = dict[str, Any]

MODES = ("no-prewarm", "prewarm", "punctual")
SIM_IMAGE = "127.0.0.1:5000/sim/app:1"
# The simulated backend's timers, modelled on CRI calls measured on this machine type
# (machine-notes: RunPodSandbox ~100 ms with a netns, Create+Start ~60 ms, 100 MB pull ~1.2 s).
SIM_TIMERS = {"pull_seconds": 1.2, "sandbox_seconds": 0.1, "start_seconds": 0.06}


def cronjob(
    name: str, schedule: str, tz: str, template: JSON, parallelism: int = 1, punctual: bool = False
) -> JSON:
    """A CronJob whose Job runs ``parallelism`` pods once (no retries, no overlap); ``punctual``:
    opted in to warmlet's early firing with a hold."""
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, **({"annotations": {OPT_IN: "true"}} if punctual else {})},
        "spec": {
            "schedule": schedule,
            "timeZone": tz,
            "startingDeadlineSeconds": 300,
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "spec": {
                    "parallelism": parallelism,
                    "completions": parallelism,
                    "backoffLimit": 0,
                    "template": template,
                }
            },
        },
    }


# ---------------------------------------------------------------------------------------- pod clock


@dataclass
class PodTimeline:
    """Watches one namespace's pods and records first-seen created/bound/Running wall-clock times
    (``time.time()``, compared with the scheduled instant), the start level and the real start per pod."""

    client: KubeClient
    ns: str
    expect: int = 0
    pods: dict[str, PodTimes] = field(default_factory=dict)
    started: dict[str, tuple[float, str]] = field(default_factory=dict)  # name -> (start, source)
    all_running: asyncio.Event = field(default_factory=asyncio.Event)
    _running: int = 0

    def observe(self, obj: Mapping[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        t = self.pods.get(name)
        if t is None:
            t = self.pods[name] = PodTimes(created=now)
        if t.bound is None and (obj.get("spec") or {}).get("nodeName"):
            t.bound = now
        if t.running is None and (obj.get("status") or {}).get("phase") == "Running":
            t.running = now
            self._running += 1
            if self.expect and self._running >= self.expect:
                self.all_running.set()
        t.annotations.update((obj.get("metadata") or {}).get("annotations") or {})
        s = better_start(self.started.get(name), started_at(obj))
        if s is not None:
            self.started[name] = s

    def settled(self) -> bool:
        """Every Running pod has its start level and its millisecond start annotation."""
        return all(
            t.level and (self.started.get(k) or (0.0, ""))[1] == SOURCE_ANNOTATION
            for k, t in self.pods.items()
            if t.running is not None
        )

    async def run(self) -> None:
        def on_event(etype: str, obj: JSON) -> None:
            if etype != "DELETED":
                self.observe(obj, time.time())

        await watch_namespace_pods(self.client, self.ns, on_event)


# ---------------------------------------------------------------------------------------- one variant


@dataclass
class Variant:
    backend: str  # "cri" | "simulated"
    mode: str  # one of MODES
    pods: int
    parallelism: int
    lead: float  # cron prewarm lead (punctual: added to the punctual lead)
    punctual_lead: float = 60.0
    start_wave_concurrency: int = 0  # pods.start_wave_concurrency (0: the backend's default)

    @property
    def label(self) -> str:
        return f"{self.backend}/{self.mode}"

    @property
    def prewarm(self) -> bool:
        return self.mode != "no-prewarm"

    @property
    def punctual(self) -> bool:
        return self.mode == "punctual"

    @property
    def prewarm_lead(self) -> float:
        return self.lead + (self.punctual_lead if self.punctual else 0.0)


_PREWARMED_RE = re.compile(r"prewarmed cronjob .*?count=(\d+)")


def prewarmed_from_log(text: str) -> int:
    """Sandboxes warmlet reports as prewarmed ("prewarmed cronjob ... count=N" log lines)."""
    return sum(int(m.group(1)) for m in _PREWARMED_RE.finditer(text))


def variant_pool(v: Variant) -> JSON:
    """The warmlet pool section of a variant: prewarming on/off, caps that fit the burst."""
    return {
        "cron_prewarm": v.prewarm,
        "cron_lead_seconds": v.prewarm_lead,
        "global_max_sandboxes": max(256, v.pods + 16),
        # each sandbox counts at least 8 MiB against the memory cap (both backends run WarmPool)
        "global_max_memory_bytes": max(8 * 1024**3, (v.pods + 16) * 8 * 1024**2),
        "max_per_workload": max(8, v.parallelism),
        "idle_ttl_seconds": 3600,
    }


def variant_sections(v: Variant) -> JSON:
    """Config sections beside the pool: punctual CronJobs on for the punctual variant, the start
    wave's concurrency when set."""
    out: JSON = {}
    if v.punctual:
        out["punctual"] = {"enabled": True, "lead_seconds": v.punctual_lead}
    if v.start_wave_concurrency:
        out["pods"] = {"start_wave_concurrency": v.start_wave_concurrency}
    return out


async def idle_cri_sandboxes(bed: Bed, instance: str) -> int:
    """Ready sandboxes of one warmlet instance in the runtime (before the instant: all idle)."""
    from sandbox.cri.client import CriClient
    from sandbox.cri.mapping import managed_selector

    cri = CriClient(bed.cri_endpoint)
    try:
        return sum(1 for sb in await cri.list_pod_sandbox(labels=managed_selector(instance)) if sb.state == 0)
    finally:
        await cri.close()


async def prewarmed_now(bed: Bed, h: NodeHandle) -> int:
    if h.backend == "cri":
        return await idle_cri_sandboxes(bed, h.name)
    return prewarmed_from_log(h.log_path.read_text(errors="replace"))


async def delete_ns_timed(client: KubeClient, ns: str, within_s: float = 300) -> float | None:
    """Delete the namespace and wait until it is gone; seconds it took (None: still there)."""
    t0 = time.monotonic()
    gone = await delete_namespace(client, ns, within_s)
    return round(time.monotonic() - t0, 1) if gone else None


class SharedInstant:
    """One scheduled instant for variants that fire together (quick mode), chosen once all are set up."""

    def __init__(self, parties: int) -> None:
        self.barrier = asyncio.Barrier(parties)
        self.gaps: list[float] = []
        self.instant = 0.0

    async def agree(self, gap: float) -> float:
        self.gaps.append(gap)
        if await self.barrier.wait() == 0:
            self.instant = next_boundary(time.time(), max(self.gaps))
        await self.barrier.wait()
        return self.instant


async def warm_up_image(client: KubeClient, ns: str, node: str, image: str, command: list[str]) -> None:
    """Run and delete one bare pod on the node so the image is cached there (image_cached starts)."""
    pod = owned_pod("warmup", node, image, command=command, grace_seconds=1)
    await client.post(f"/api/v1/namespaces/{ns}/pods", pod)

    async def running() -> bool:
        p = await client.get(f"/api/v1/namespaces/{ns}/pods/warmup")
        return (p.get("status") or {}).get("phase") == "Running"

    with contextlib.suppress(TimeoutError):  # then the measured starts pull it: it shows in their levels
        await wait_for(running, 60, 0.25, "the warm-up pod Running")
    await client.delete(f"/api/v1/namespaces/{ns}/pods/warmup")


@dataclass
class VariantRun:
    """What one variant measured: its figures and the per-pod series for the plots (ms)."""

    figures: JSON
    running_ms: list[float]
    started_ms: list[float]


async def run_variant(
    client: KubeClient,
    bed: Bed,
    v: Variant,
    min_gap: float,
    wait_s: float,
    shared: SharedInstant | None = None,
) -> VariantRun:
    """Create the CronJobs, pick the instant, start warmlet, wait for the instant, measure, clean up."""
    image = bed.images.get("busybox", "") if v.backend == "cri" else SIM_IMAGE
    ns = await create_namespace(client, "midnight")
    n_cj = max(1, v.pods // v.parallelism)
    expect = n_cj * v.parallelism
    try:
        # Created with a schedule hours away (creating thousands takes a while), then retargeted to
        # an instant that leaves time for the patch, warmlet's start and first CronJob list + lead.
        t0 = time.time()
        sched, tz = daily_schedule(next_boundary(t0 + 3 * 3600, 0))
        names = [f"cj-{i:05d}" for i in range(n_cj)]
        objs = [cronjob(n, sched, tz, {}, v.parallelism, v.punctual) for n in names]  # template below
        sim = dict(SIM_TIMERS) if v.backend == "simulated" else None
        async with warmlet_process(bed, v.backend, variant_pool(v), sim, sections=variant_sections(v)) as h:
            tpl = pod_template(
                h.name,
                None,
                terminationGracePeriodSeconds=1,
                restartPolicy="Never",
                containers=[
                    {
                        "name": "app",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": HOLD_COMMAND,
                    }
                ],
            )
            for o in objs:
                o["spec"]["jobTemplate"]["spec"]["template"] = tpl
            await bounded(client.post(f"/apis/batch/v1/namespaces/{ns}/cronjobs", o) for o in objs)
            await warm_up_image(client, ns, h.name, image, HOLD_COMMAND)
            create_s = time.time() - t0
            # warmlet relists CronJobs every 15 s: leave it one relist after the patch, plus the lead
            gap = min_gap + 16 + create_s / 2 + (v.prewarm_lead if v.prewarm else 0.0)
            instant = await shared.agree(gap) if shared else next_boundary(time.time(), gap)
            sched, tz = daily_schedule(instant)
            await bounded(
                client.patch(f"/apis/batch/v1/namespaces/{ns}/cronjobs/{n}", {"spec": {"schedule": sched}})
                for n in names
            )
            timeline = PodTimeline(client, ns, expect)
            watcher = asyncio.create_task(timeline.run())
            log.info(
                "%s: %d CronJobs fire at %s %s (in %.0fs)", v.label, n_cj, sched, tz, instant - time.time()
            )
            prewarm_done_at: float | None = None
            prewarmed = 0
            while time.time() < instant - 0.3:
                prewarmed = await prewarmed_now(bed, h)
                if prewarm_done_at is None and v.prewarm and prewarmed >= expect:
                    prewarm_done_at = time.time()
                await asyncio.sleep(min(1.0, max(0.0, instant - 0.3 - time.time())))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(timeline.all_running.wait(), max(0.0, instant - time.time()) + wait_s)
            # start levels and start times are patched right after Running: give the last ones a moment
            for _ in range(30):
                if timeline.settled():
                    break
                await asyncio.sleep(0.5)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            jobs = (await client.list_all(f"/apis/batch/v1/namespaces/{ns}/jobs"))["items"]
            times = {k: t for k, t in timeline.pods.items() if k.startswith("cj-")}
            meta: JSON = {
                "mode": v.mode,
                "cronjobs": n_cj,
                "parallelism": v.parallelism,
                "lead_seconds": v.prewarm_lead if v.prewarm else None,
                "punctual_lead_seconds": v.punctual_lead if v.punctual else None,
                "start_wave_concurrency": v.start_wave_concurrency or "backend default",
                "jobs": len(jobs),
                "schedule": f"{sched} ({tz})",
                "setup_seconds": round(create_s, 1),
                "prewarm_complete_seconds_before_instant": (
                    round(instant - prewarm_done_at, 1) if prewarm_done_at is not None else None
                ),
                "warmlet_log": str(h.log_path),
            }
            fig = variant_figures(
                times, instant, expect, prewarmed, meta, timeline.started, duplicate_jobs(jobs)
            )
            fig["cleanup_seconds"] = await delete_ns_timed(client, ns)
        running_ms = [(t.running - instant) * 1000 for t in times.values() if t.running is not None]
        started_ms = [(s - instant) * 1000 for k, (s, _) in timeline.started.items() if k in times]
        return VariantRun(fig, running_ms, started_ms)
    finally:
        with contextlib.suppress(Exception):
            await delete_namespace(client, ns, 120)
