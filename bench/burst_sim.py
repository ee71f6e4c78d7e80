"""Burst benchmark: N pods on one simulated warmlet node, against a real API server.

Measures time from the first create to all N Running and per-pod bind-to-Running
latency (bind = first watch event with spec.nodeName set, Running = first event with
phase Running, both client-side timestamps), next to a floor: a bare loop that creates
the same number of pods bound to a node without any kubelet and writes the same status
patches with the same concurrency through the same API server. The ratio says how much
warmlet itself adds on top of the API server.

    python -m bench.burst_sim [--kubeconfig PATH] [-n 1000]

Without --kubeconfig (or $KUBECONFIG) it starts the test bed itself (testbed.bed.TestBed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, summarize_ms, write_result
from bench.podwatch import watch_namespace_pods
from provider.kubeclient import STRATEGIC_MERGE_PATCH, KubeClient
from provider.status import compute_status
from sandbox.backend import ContainerRuntimeState, ContainerState
from testbed.testing import bare_pod, create_namespace, node_config, running_node

log = logging.getLogger("bench.burst_sim")
JSON = dict[str, Any]
SCENARIO = "burst-sim"


class PodClock:
    """Client-side bind and Running timestamps per pod, from a watch on the namespace."""

    def __init__(self, client: KubeClient, ns: str) -> None:
        self.client, self.ns = client, ns
        self.bound: dict[str, float] = {}
        self.running: dict[str, float] = {}
        self.done = asyncio.Event()
        self.expect = 0

    async def run(self) -> None:
        await watch_namespace_pods(self.client, self.ns, self._observe, list_first=False)

    def _observe(self, etype: str, obj: JSON) -> None:
        if etype == "DELETED":
            return
        name = obj["metadata"]["name"]
        now = time.monotonic()
        if (obj.get("spec") or {}).get("nodeName"):
            self.bound.setdefault(name, now)
        if (obj.get("status") or {}).get("phase") == "Running":
            self.running.setdefault(name, now)
            if self.expect and len(self.running) >= self.expect:
                self.done.set()


async def create_pods(client: KubeClient, ns: str, pods: list[JSON], concurrency: int = 50) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(p: JSON) -> None:
        async with sem:
            await client.post(f"/api/v1/namespaces/{ns}/pods", p)

    await asyncio.gather(*(one(p) for p in pods))


async def measure_warmlet(client: KubeClient, kubeconfig: str, n: int, workdir: Path) -> JSON:
    cfg = node_config(kubeconfig, workdir)
    async with running_node(cfg):
        ns = await create_namespace(client, "burst")
        clock = PodClock(client, ns)
        clock.expect = n
        watcher = asyncio.create_task(clock.run())
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await create_pods(client, ns, [bare_pod(f"b-{i}", cfg.node.name) for i in range(n)])
        created = time.monotonic() - t0
        await asyncio.wait_for(clock.done.wait(), 600)
        total = max(clock.running.values()) - t0
        watcher.cancel()
        lat = [clock.running[k] - clock.bound[k] for k in clock.running if k in clock.bound]
        await client.delete(f"/api/v1/namespaces/{ns}")
    return {
        "seconds_to_all_running": round(total, 2),
        "create_seconds": round(created, 2),
        **summarize_ms(lat),
    }


async def measure_floor(client: KubeClient, n: int, workers: int = 64) -> float:
    """Create N pods on a kubelet-less node and write a Running status patch for each."""
    node = f"floor-{uuid.uuid4().hex[:6]}"
    await client.post("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    ns = await create_namespace(client, "floor")
    try:
        clock = PodClock(client, ns)
        clock.expect = n
        watcher = asyncio.create_task(clock.run())
        await asyncio.sleep(0.5)
        queue: asyncio.Queue[JSON] = asyncio.Queue()
        t0 = time.monotonic()

        async def create(i: int, sem: asyncio.Semaphore) -> None:
            p = bare_pod(f"f-{i}", node)
            p["spec"]["nodeName"] = node
            async with sem:
                queue.put_nowait(await client.post(f"/api/v1/namespaces/{ns}/pods", p))

        async def patcher() -> None:
            while True:
                pod = await queue.get()
                now = time.time()
                rt = ContainerRuntimeState(
                    container_id=uuid.uuid4().hex,
                    pod_uid=pod["metadata"]["uid"],
                    name="app",
                    state=ContainerState.RUNNING,
                    created_at=now,
                    started_at=now,
                )
                status = compute_status(
                    pod, [rt], {}, now, sandbox_ready=True, pod_ip="10.0.0.1", host_ip="127.0.0.1"
                )
                meta = pod["metadata"]
                await client.patch(
                    f"/api/v1/namespaces/{ns}/pods/{meta['name']}/status",
                    {"metadata": {"uid": meta["uid"]}, "status": status},
                    content_type=STRATEGIC_MERGE_PATCH,
                )
                queue.task_done()

        sem = asyncio.Semaphore(50)
        patchers = [asyncio.create_task(patcher()) for _ in range(workers)]
        await asyncio.gather(*(create(i, sem) for i in range(n)))
        await asyncio.wait_for(clock.done.wait(), 600)
        floor = max(clock.running.values()) - t0
        for t in [*patchers, watcher]:
            t.cancel()
        return round(floor, 2)
    finally:
        with contextlib.suppress(Exception):
            await client.delete(f"/api/v1/namespaces/{ns}")
        with contextlib.suppress(Exception):
            await client.delete(f"/api/v1/nodes/{node}")


async def measure(args: argparse.Namespace) -> JSON:
    """Run the burst and its floor; write bench/results/burst-sim.json; return the result."""
    from bench.harness import bed_session

    workdir = Path(tempfile.mkdtemp(prefix="burst-sim-"))
    # the given cluster, else the running CLI test bed, else a test bed started for the run
    async with bed_session(args.kubeconfig or os.environ.get("KUBECONFIG")) as bed:
        kubeconfig = bed.kubeconfig
        client = await KubeClient.from_kubeconfig(kubeconfig, max_connections=64)
        try:
            warm = await measure_warmlet(client, kubeconfig, args.n, workdir)
            floor = await measure_floor(client, args.n)
        finally:
            await client.close()
    result = {
        "n": args.n,
        "seconds_to_all_running": warm["seconds_to_all_running"],
        "p50_ms": warm["p50_ms"],
        "p99_ms": warm["p99_ms"],
        "floor_seconds": floor,
        "ratio_to_floor": round(warm["seconds_to_all_running"] / floor, 2) if floor else None,
        "detail": warm,
    }
    write_result(SCENARIO, result)
    return result


# ---- scenario interface (bench/harness.py): ``warmlet bench burst-sim [--quick]``


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """-n; --kubeconfig comes from bench/cli.py's common options."""
    parser.add_argument("-n", type=int, default=None, help="pods in the burst (default 1000; --quick 100)")


async def run(args: argparse.Namespace, quick: bool) -> JSON:
    if getattr(args, "n", None) is None:
        args.n = 100 if quick else 1000
    return await measure(args)


def summary_rows(result: JSON) -> list[tuple[str, str]]:
    return [
        ("pods", str(result.get("n"))),
        ("all Running (s)", f"{result.get('seconds_to_all_running')}"),
        ("bind→Running p50 (ms)", f"{result.get('p50_ms')}"),
        ("bind→Running p99 (ms)", f"{result.get('p99_ms')}"),
        ("floor: API server only (s)", f"{result.get('floor_seconds')}"),
        ("ratio to floor", f"{result.get('ratio_to_floor')}x"),
    ]


async def main_async(args: argparse.Namespace) -> Path:
    await measure(args)
    path = RESULTS_DIR / f"{SCENARIO}.json"
    print(path.read_text())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kubeconfig", help="cluster to use (default: $KUBECONFIG or start the test bed)")
    parser.add_argument("-n", type=int, default=1000, help="pods in the burst")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
