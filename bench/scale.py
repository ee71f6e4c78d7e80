"""Scale: N pods (default 10,000; --quick 1,000) on one simulated warmlet node.

warmlet runs as its own process (``warmlet run --config``, simulated backend), so its resident
memory (/proc/<pid>/status VmRSS, VmHWM) and CPU time (/proc/<pid>/stat utime+stime) are its own.
Pods are created directly bound (spec.nodeName set; the scheduler is not involved) by the bench
in parallel (--concurrency POSTs in flight). Measured side by side through the same API server:

- warmlet: first POST → all N Running, RSS/CPU before and after, CPU seconds per pod, and the
  watch lag: from the pod's first watch event (it is created bound, so that is its bind) to the
  first event carrying warmlet's status write (conditions/hostIP), both seen by the client.
- floor: the same N pods on a kubelet-less node with a bare loop writing the same Running status
  patches (bench.burst_sim.measure_floor): what the API server and etcd on this machine allow.

On 2 cores the API server and etcd are the bottleneck; the ratio to the floor says what warmlet
adds. Everything is deleted afterwards (namespaces deleted and waited for).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, plot_cdf, ratio, summarize_ms, write_result
from bench.harness import bed_session, delete_namespace
from bench.podwatch import watch_namespace_pods
from bench.rbac_node import warmlet_process
from provider.kubeclient import ApiError, KubeClient
from testbed.testing import bare_pod, create_namespace

log = logging.getLogger("bench.scale")
JSON = dict[str, Any]
SCENARIO = "scale"


# ---------------------------------------------------------------------------------------- /proc


@dataclass(frozen=True)
class ProcSample:
    """One reading of a process's memory and CPU time."""

    at: float
    rss_kb: int
    hwm_kb: int
    cpu_seconds: float


def parse_status_kb(text: str, field_name: str = "VmRSS") -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...); 0 when absent."""
    for line in text.splitlines():
        if line.startswith(field_name + ":"):
            parts = line.split()
            return int(parts[1]) if len(parts) >= 2 else 0
    return 0


def parse_stat_cpu_seconds(text: str, ticks_per_second: int = 100) -> float:
    """utime + stime of /proc/<pid>/stat in seconds (the comm field may contain spaces)."""
    rest = text[text.rindex(")") + 2 :].split()
    # after "pid (comm) ": state is field 3, so utime (field 14) is rest[11] and stime rest[12]
    return (int(rest[11]) + int(rest[12])) / ticks_per_second


def sample(pid: int) -> ProcSample:
    ticks = os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text()
    stat = Path(f"/proc/{pid}/stat").read_text()
    return ProcSample(
        at=time.monotonic(),
        rss_kb=parse_status_kb(status, "VmRSS"),
        hwm_kb=parse_status_kb(status, "VmHWM"),
        cpu_seconds=parse_stat_cpu_seconds(stat, ticks),
    )


# ---------------------------------------------------------------------------------------- pod clock


def warmlet_wrote_status(obj: Mapping[str, Any]) -> bool:
    """Whether a pod object carries a status written by its node (the API server writes only phase)."""
    st = obj.get("status") or {}
    return bool(st.get("conditions") or st.get("hostIP") or st.get("containerStatuses"))


@dataclass
class ScaleClock:
    """First-seen (monotonic) times per pod: seen bound, first node status write, Running."""

    expect: int
    bound: dict[str, float] = field(default_factory=dict)
    status: dict[str, float] = field(default_factory=dict)
    running: dict[str, float] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def observe(self, obj: Mapping[str, Any], now: float) -> None:
        name = obj["metadata"]["name"]
        if (obj.get("spec") or {}).get("nodeName"):
            self.bound.setdefault(name, now)
        if warmlet_wrote_status(obj):
            self.status.setdefault(name, now)
        if (obj.get("status") or {}).get("phase") == "Running" and name not in self.running:
            self.running[name] = now
            if len(self.running) >= self.expect:
                self.done.set()

    async def run(self, client: KubeClient, ns: str) -> None:
        def on_event(etype: str, obj: JSON) -> None:
            if etype != "DELETED":
                self.observe(obj, time.monotonic())

        await watch_namespace_pods(client, ns, on_event)


def lags(first: Mapping[str, float], second: Mapping[str, float]) -> list[float]:
    """Per pod ``second - first`` (seconds) for pods present in both."""
    return [second[k] - first[k] for k in second if k in first]


# ---------------------------------------------------------------------------------------- measure


async def create_bound(client: KubeClient, ns: str, node: str, n: int, concurrency: int) -> float:
    """POST n pods with spec.nodeName set, ``concurrency`` in flight; seconds it took."""
    sem = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()

    async def one(i: int) -> None:
        p = bare_pod(f"s-{i:05d}", node)
        p["spec"]["nodeName"] = node
        async with sem:
            await client.post(f"/api/v1/namespaces/{ns}/pods", p)

    await asyncio.gather(*(one(i) for i in range(n)))
    return time.monotonic() - t0


async def force_delete_floor_namespaces(client: KubeClient) -> None:
    """The floor's pods have no kubelet to confirm deletion: remove them with grace 0."""
    for ns in (await client.list_all("/api/v1/namespaces")).get("items") or []:
        name = ns["metadata"]["name"]
        if name.startswith("floor-"):
            # deleting thousands can outlast the client's request timeout; the wait below decides
            with contextlib.suppress(ApiError, TimeoutError):
                await client.delete(f"/api/v1/namespaces/{name}/pods", gracePeriodSeconds=0)
            await delete_namespace(client, name, 300)


async def measure_warmlet(
    client: KubeClient, bed: Any, n: int, concurrency: int, wait_s: float
) -> tuple[JSON, list[float]]:
    pool = {"cron_prewarm": False}
    async with warmlet_process(bed, "simulated", pool, node={"pods": str(n + 1000)}) as h:
        assert h.proc is not None
        pid = h.proc.pid
        await asyncio.sleep(2.0)  # settle after registration
        before = sample(pid)
        ns = await create_namespace(client, "scale")
        try:
            clock = ScaleClock(n)
            watcher = asyncio.create_task(clock.run(client, ns))
            await asyncio.sleep(0.5)
            peak = before
            t0 = time.monotonic()
            creator = asyncio.create_task(create_bound(client, ns, h.name, n, concurrency))
            deadline = t0 + wait_s
            while not clock.done.is_set() and time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(clock.done.wait(), 1.0)
                s = sample(pid)
                if s.rss_kb > peak.rss_kb:
                    peak = s
            create_s = await creator
            all_running = max(clock.running.values()) - t0 if clock.done.is_set() else None
            after = sample(pid)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            t_del = time.monotonic()
            gone = await delete_namespace(client, ns, 900)
            delete_s = time.monotonic() - t_del
            after_delete = sample(pid)
        finally:
            with contextlib.suppress(Exception):
                await delete_namespace(client, ns, 300)
    watch_lag = lags(clock.bound, clock.status)
    start = lags(clock.bound, clock.running)
    cpu = after.cpu_seconds - before.cpu_seconds
    fig: JSON = {
        "pods": n,
        "running": len(clock.running),
        "create_seconds": round(create_s, 2),
        "seconds_to_all_running": round(all_running, 2) if all_running is not None else None,
        "pods_per_second": round(n / all_running, 1) if all_running else None,
        "rss_mb_before": round(before.rss_kb / 1024, 1),
        "rss_mb_after": round(after.rss_kb / 1024, 1),
        "rss_mb_peak": round(max(after.hwm_kb, peak.rss_kb) / 1024, 1),
        "rss_kb_per_pod": round((after.rss_kb - before.rss_kb) / n, 2),
        "rss_mb_after_delete": round(after_delete.rss_kb / 1024, 1),
        "cpu_seconds": round(cpu, 2),
        "cpu_ms_per_pod": round(cpu * 1000 / n, 3),
        "cpu_seconds_delete": round(after_delete.cpu_seconds - after.cpu_seconds, 2),
        "delete_seconds": round(delete_s, 1),
        "namespace_deleted": gone,
        "watch_lag": summarize_ms(watch_lag),
        # with zero simulated timers warmlet's first status write is usually already Running
        "first_write_is_running_fraction": round(
            sum(1 for k, t in clock.status.items() if clock.running.get(k) == t) / max(1, len(clock.status)),
            3,
        ),
        "bind_to_running": summarize_ms(start),
    }
    return fig, [v * 1000 for v in watch_lag]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--pods", type=int, default=None, help="pods (default 10000; --quick 1000)")
    parser.add_argument("--concurrency", type=int, default=50, help="pod POSTs in flight")
    parser.add_argument("--no-floor", action="store_true", help="skip the status-writing floor loop")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for all Running")


async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    from bench.burst_sim import measure_floor

    n = args.pods or (1000 if quick else 10_000)
    series: dict[str, Sequence[float]] = {}
    async with bed_session(getattr(args, "kubeconfig", None)) as bed:
        client = await KubeClient.from_kubeconfig(bed.kubeconfig, max_connections=64)
        try:
            warm, lag_ms = await measure_warmlet(client, bed, n, args.concurrency, args.timeout)
            series["warmlet watch lag (bind event -> first status write)"] = lag_ms
            floor = None
            if not args.no_floor:
                floor = await measure_floor(client, n)
                await force_delete_floor_namespaces(client)
        finally:
            await client.close()
    result: JSON = {
        "quick": quick,
        "n": n,
        "pods_created": f"directly bound (spec.nodeName set), {args.concurrency} POSTs in flight",
        "warmlet_process": "warmlet run --config (simulated backend, zero timers), own process",
        "warmlet_config": "defaults: pods.workers=64",
        "warmlet": warm,
        # interface figures: per-pod bind -> Running of the warmlet variant
        "p50_ms": warm["bind_to_running"]["p50_ms"],
        "p95_ms": warm["bind_to_running"]["p95_ms"],
        "p99_ms": warm["bind_to_running"]["p99_ms"],
        "floor": {
            "what": "same pods on a kubelet-less node + bare loop writing Running status (64 writers)",
            "seconds_to_all_running": floor,
        },
        "ratios": {
            "warmlet_over_floor_all_running": ratio(warm["seconds_to_all_running"] or math_nan(), floor or 0),
        },
    }
    write_result(SCENARIO, result)
    plot_cdf(
        series,
        f"scale: {n} pods on one simulated node, watch lag",
        RESULTS_DIR / f"{SCENARIO}.png",
        xlabel="pod's bind event -> warmlet's first status write, client-side (ms)",
    )
    return {"scenario": SCENARIO, **result}


def math_nan() -> float:
    return float("nan")


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    w = result.get("warmlet") or {}
    return [
        ("pods", str(result.get("n"))),
        ("all Running (s)", str(w.get("seconds_to_all_running"))),
        ("floor (s)", str((result.get("floor") or {}).get("seconds_to_all_running"))),
        ("ratio to floor", str((result.get("ratios") or {}).get("warmlet_over_floor_all_running"))),
        (
            "RSS before/after/peak (MB)",
            f"{w.get('rss_mb_before')}/{w.get('rss_mb_after')}/{w.get('rss_mb_peak')}",
        ),
        ("RSS per pod (kB)", str(w.get("rss_kb_per_pod"))),
        ("CPU per pod (ms)", str(w.get("cpu_ms_per_pod"))),
        ("watch lag p50/p99 (ms)", f"{w['watch_lag']['p50_ms']}/{w['watch_lag']['p99_ms']}" if w else ""),
    ]


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.scale")
