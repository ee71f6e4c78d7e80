"""Midnight burst: K CronJobs sharing one schedule fire K pods at the same instant.

Models "thousands of jobs that must start at 00:00:00 (tolerance 3 s)": K distinct CronJobs
(each Job runs one pod, --parallelism P packs P pods into one Job of K/P CronJobs instead), all
scheduled at one minute boundary, run once with warmlet's schedule-aware prewarming
(``pool.cron_prewarm``, lead time --lead-seconds) and once without (the pool is empty at the
instant, the image is cached: image_cached starts). The measured firing is the first one after
the CronJobs are created (a daily schedule "M H * * *" at the chosen boundary, so it fires once).

Per pod, wall-clock times seen by a client-side watch: created (first event), bound (first event
with spec.nodeName), Running (first event with phase Running), and the pod's
``warmlet.io/start-level`` annotation. From the scheduled instant: p50/p99 to Running, time to all
Running, how many were Running within 3 s, and the split control plane (instant → bound: CronJob
controller → Job → pod → scheduler) vs warmlet (bound → Running). The floor is the control plane
alone: no pod can run before it is bound.

    python -m bench.midnight_burst [--backend cri|simulated|both] [--quick]

Cluster: --kubeconfig, else the running CLI test bed, else a test bed started for the run
(bench.harness.bed_session); the CRI variants need the bed's containerd and busybox image.
warmlet runs as ``warmlet run`` subprocesses with a user bound to kind-config/rbac.yaml's role
(bench.rbac_node).
Quick: 60 simulated pods per variant, both variants firing at the same instant on two nodes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.common import RESULTS_DIR, plot_cdf, ratio, summarize_ms, write_result
from bench.harness import HOLD_COMMAND, Bed, NodeHandle, bed_session, delete_namespace, owned_pod
from bench.podwatch import PodTimes, watch_namespace_pods
from bench.rbac_node import warmlet_process
from provider.kubeclient import KubeClient
from testbed.testing import create_namespace, pod_template, wait_for

log = logging.getLogger("bench.midnight_burst")
JSON = dict[str, Any]

SCENARIO = "midnight-burst"
TARGET_SECONDS = 3.0  # the users' tolerance for a job scheduled at 00:00:00
SIM_IMAGE = "127.0.0.1:5000/sim/app:1"
# The simulated backend's timers, modelled on CRI calls measured on this machine type
# (machine-notes: RunPodSandbox ~100 ms with a netns, Create+Start ~60 ms, 100 MB pull ~1.2 s).
SIM_TIMERS = {"pull_seconds": 1.2, "sandbox_seconds": 0.1, "start_seconds": 0.06}


# ---------------------------------------------------------------------------------------- pure parts


def next_boundary(now: float, min_lead: float, period: float = 60.0) -> float:
    """The first multiple of ``period`` (a minute boundary) at least ``min_lead`` seconds after ``now``.

    CronJob schedules have minute resolution, so the burst can only fire on a boundary; it must
    leave time to create the CronJobs and, with prewarming, for warmlet to see them and prewarm.
    """
    t = math.ceil(now / period) * period
    while t - now < min_lead:
        t += period
    return float(t)


def daily_schedule(instant: float) -> tuple[str, str]:
    """(cron schedule, timeZone) firing once a day at ``instant`` (a minute boundary, UTC)."""
    tm = time.gmtime(instant)
    return f"{tm.tm_min} {tm.tm_hour} * * *", "Etc/UTC"


def within(latencies: Iterable[float], limit: float = TARGET_SECONDS) -> int:
    """How many latencies (seconds) are at most ``limit``."""
    return sum(1 for v in latencies if v <= limit)


def level_counts(levels: Iterable[str | None]) -> dict[str, int]:
    """Start-level distribution; pods without the annotation count as "unknown"."""
    out: dict[str, int] = {}
    for lv in levels:
        k = lv or "unknown"
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def cronjob(name: str, schedule: str, tz: str, template: JSON, parallelism: int = 1) -> JSON:
    """A CronJob whose Job runs ``parallelism`` pods once (no retries, no overlap)."""
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name},
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
    (``time.time()``, compared with the scheduled instant) and the start level per pod."""

    client: KubeClient
    ns: str
    expect: int = 0
    pods: dict[str, PodTimes] = field(default_factory=dict)
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

    async def run(self) -> None:
        def on_event(etype: str, obj: JSON) -> None:
            if etype != "DELETED":
                self.observe(obj, time.time())

        await watch_namespace_pods(self.client, self.ns, on_event)


# ---------------------------------------------------------------------------------------- one variant


@dataclass
class Variant:
    backend: str  # "cri" | "simulated"
    prewarm: bool
    pods: int
    parallelism: int
    lead: float

    @property
    def label(self) -> str:
        return f"{self.backend}/{'prewarm' if self.prewarm else 'no-prewarm'}"


_PREWARMED_RE = re.compile(r"prewarmed cronjob .*?count=(\d+)")


def prewarmed_from_log(text: str) -> int:
    """Sandboxes warmlet reports as prewarmed ("prewarmed cronjob ... count=N" log lines)."""
    return sum(int(m.group(1)) for m in _PREWARMED_RE.finditer(text))


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


async def bounded(calls: Iterable[Awaitable[Any]], concurrency: int = 32) -> None:
    """Await ``calls`` with at most ``concurrency`` in flight (thousands of POSTs or PATCHes)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(call: Awaitable[Any]) -> None:
        async with sem:
            await call

    await asyncio.gather(*(one(c) for c in calls))


def variant_figures(
    times: Mapping[str, PodTimes], instant: float, expect: int, prewarmed: int, meta: JSON
) -> JSON:
    """Everything reported for one variant, from the pods' timelines (pure)."""
    running = [t.running - instant for t in times.values() if t.running is not None]
    bound = [t.bound - instant for t in times.values() if t.bound is not None]
    created = [t.created - instant for t in times.values() if t.created is not None]
    warmlet = [t.running - t.bound for t in times.values() if t.running is not None and t.bound is not None]
    sched = [t.bound - t.created for t in times.values() if t.bound is not None and t.created is not None]
    return {
        **summarize_ms(running),
        "expected": expect,
        "running": len(running),
        "seconds_to_all_running": round(max(running), 2) if len(running) >= expect and running else None,
        "seconds_to_all_bound": round(max(bound), 2) if len(bound) >= expect and bound else None,
        "within_3s": within(running),
        "within_3s_fraction": round(within(running) / expect, 3) if expect else None,
        "start_levels": level_counts(t.level for t in times.values()),
        "prewarmed_at_instant": prewarmed,
        "split": {
            "instant_to_created": summarize_ms(created),
            "created_to_bound": summarize_ms(sched),
            "control_plane_instant_to_bound": summarize_ms(bound),
            "warmlet_bound_to_running": summarize_ms(warmlet),
        },
        **meta,
    }


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


def variant_pool(v: Variant) -> JSON:
    """The warmlet pool section of a variant: prewarming on/off, caps that fit the burst."""
    return {
        "cron_prewarm": v.prewarm,
        "cron_lead_seconds": v.lead,
        "global_max_sandboxes": max(256, v.pods + 16),
        # each sandbox counts at least 8 MiB against the memory cap (both backends run WarmPool)
        "global_max_memory_bytes": max(8 * 1024**3, (v.pods + 16) * 8 * 1024**2),
        "max_per_workload": max(8, v.parallelism),
        "idle_ttl_seconds": 3600,
    }


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


async def run_variant(
    client: KubeClient,
    bed: Bed,
    v: Variant,
    min_gap: float,
    wait_s: float,
    shared: SharedInstant | None = None,
) -> tuple[JSON, list[float]]:
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
        objs = [cronjob(n, sched, tz, {}, v.parallelism) for n in names]  # template: node name below
        sim = dict(SIM_TIMERS) if v.backend == "simulated" else None
        async with warmlet_process(bed, v.backend, variant_pool(v), sim) as h:
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
            gap = min_gap + 16 + create_s / 2 + (v.lead if v.prewarm else 0.0)
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
            # start levels are patched right after Running: give the last ones a moment
            for _ in range(30):
                if all(t.level for t in timeline.pods.values() if t.running is not None):
                    break
                await asyncio.sleep(0.5)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            times = {k: t for k, t in timeline.pods.items() if k.startswith("cj-")}
            meta: JSON = {
                "cronjobs": n_cj,
                "parallelism": v.parallelism,
                "lead_seconds": v.lead if v.prewarm else None,
                "schedule": f"{sched} ({tz})",
                "setup_seconds": round(create_s, 1),
                "prewarm_complete_seconds_before_instant": (
                    round(instant - prewarm_done_at, 1) if prewarm_done_at is not None else None
                ),
                "warmlet_log": str(h.log_path),
            }
            fig = variant_figures(times, instant, expect, prewarmed, meta)
            fig["cleanup_seconds"] = await delete_ns_timed(client, ns)
        latencies_ms = [(t.running - instant) * 1000 for t in times.values() if t.running is not None]
        return fig, latencies_ms
    finally:
        with contextlib.suppress(Exception):
            await delete_namespace(client, ns, 120)


# ---------------------------------------------------------------------------------------- scenario


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=["cri", "simulated", "both"], default="both")
    parser.add_argument("--pods-cri", type=int, default=200, help="pods fired at once on the CRI backend")
    parser.add_argument(
        "--pods-sim", type=int, default=2000, help="pods fired at once on the simulated backend"
    )
    parser.add_argument("--parallelism", type=int, default=1, help="pods per Job (K/P CronJobs)")
    parser.add_argument("--lead-seconds", type=float, default=30.0, help="cron prewarm lead time")
    parser.add_argument("--timeout", type=float, default=300.0, help="per variant, after the instant")


def variants(args: argparse.Namespace, quick: bool) -> list[Variant]:
    """Quick: 60 simulated pods per variant, short lead. Otherwise the requested backends."""
    if quick:
        return [Variant("simulated", p, 60, 1, 10.0) for p in (False, True)]
    out = []
    for backend, n in (("cri", args.pods_cri), ("simulated", args.pods_sim)):
        if args.backend in (backend, "both"):
            out += [Variant(backend, p, n, args.parallelism, args.lead_seconds) for p in (False, True)]
    return out


async def run_concurrently(
    client: KubeClient, bed: Bed, vs: Sequence[Variant], wait_s: float
) -> list[tuple[JSON, list[float]]]:
    """Quick mode: the variants fire at the same instant on their own nodes (one minute wait)."""
    shared = SharedInstant(len(vs))
    return list(await asyncio.gather(*(run_variant(client, bed, v, 5.0, wait_s, shared) for v in vs)))


async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    vs = variants(args, quick)
    results: dict[str, JSON] = {}
    series: dict[str, Sequence[float]] = {}
    kubeconfig = getattr(args, "kubeconfig", None)
    async with bed_session(kubeconfig, getattr(args, "cri_endpoint", None)) as bed:
        if any(v.backend == "cri" for v in vs) and not (bed.cri_endpoint and bed.images.get("busybox")):
            raise RuntimeError("the CRI variants need the test bed's containerd and busybox image")
        client = await KubeClient.from_kubeconfig(bed.kubeconfig, max_connections=64)
        try:
            if quick:
                pairs = await run_concurrently(client, bed, vs, args.timeout)
            else:
                pairs = [await run_variant(client, bed, v, 5.0, args.timeout) for v in vs]
        finally:
            await client.close()
    for v, (fig, lat) in zip(vs, pairs, strict=True):
        results[v.label] = fig
        series[v.label] = lat
    ratios: JSON = {}
    for backend in ("cri", "simulated"):
        on, off = results.get(f"{backend}/prewarm"), results.get(f"{backend}/no-prewarm")
        if on and off:
            ratios[backend] = {
                "p50_no_prewarm_over_prewarm": ratio(off["p50_ms"], on["p50_ms"]),
                "p99_no_prewarm_over_prewarm": ratio(off["p99_ms"], on["p99_ms"]),
                "warmlet_p50_no_prewarm_over_prewarm": ratio(
                    off["split"]["warmlet_bound_to_running"]["p50_ms"],
                    on["split"]["warmlet_bound_to_running"]["p50_ms"],
                ),
                "prewarm_p50_over_control_plane_floor_p50": ratio(
                    on["p50_ms"], on["split"]["control_plane_instant_to_bound"]["p50_ms"]
                ),
                "prewarm_p99_over_control_plane_floor_p99": ratio(
                    on["p99_ms"], on["split"]["control_plane_instant_to_bound"]["p99_ms"]
                ),
            }
    result: JSON = {
        "quick": quick,
        "target_seconds": TARGET_SECONDS,
        "variants_fire": "at the same instant on separate nodes" if quick else "one after another",
        "pods_created_by": "CronJob -> Job controller -> kube-scheduler (nodeSelector)",
        "simulated_timers": SIM_TIMERS,
        "floor": "control plane alone: instant -> pod bound (split.control_plane_instant_to_bound)",
        "variants": results,
        "ratios": ratios,
    }
    path = write_result(SCENARIO, result)
    plot_cdf(
        series,
        "midnight burst: scheduled instant -> pod Running",
        RESULTS_DIR / f"{SCENARIO}.png",
        xlabel="time from the scheduled instant to Running (ms)",
    )
    result = {"scenario": SCENARIO, **result, "path": str(path)}
    return result


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for label, v in (result.get("variants") or {}).items():
        cp = v["split"]["control_plane_instant_to_bound"]
        rows.append(
            (
                label,
                f"n={v['running']}/{v['expected']} p50={v['p50_ms']:.0f}ms p99={v['p99_ms']:.0f}ms "
                f"all={v['seconds_to_all_running']}s within3s={v['within_3s']} "
                f"bind p50={cp['p50_ms']:.0f}ms levels={v['start_levels']}",
            )
        )
    for backend, r in (result.get("ratios") or {}).items():
        rows.append(
            (
                f"{backend} ratios",
                f"p50 off/on={r['p50_no_prewarm_over_prewarm']} "
                f"p99 off/on={r['p99_no_prewarm_over_prewarm']}",
            )
        )
    return rows


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.midnight_burst")
