"""Binder benchmark: N Job-like pods created at once, time until all are bound — warmlet's fast
binder vs kube-scheduler, same pods, same nodes, same apiserver, one run.

Nodes are Node objects kept Ready by this bench (status + Lease heartbeats), labelled and tainted
like warmlet nodes, with room for every pod; nobody runs the pods, so only binding is measured.
The binder runs as a ``warmlet placement`` subprocess (own process, like kube-scheduler). Each
round creates the N pods (``--concurrency`` POSTs in flight) once with ``schedulerName:
warmlet-scheduler`` and once with the default scheduler, alternating which goes first; times are
client-side, from the first POST to the first watch event showing ``spec.nodeName``.

    warmlet bench binder [--quick] [-n 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.common import RESULTS_DIR, plot_cdf, ratio, summarize_ms, write_result
from bench.harness import REPO_ROOT, bed_session, stop_process, watch_namespace_pods
from provider.kubeclient import ApiError, KubeClient
from provider.testing import create_namespace
from provider.timefmt import rfc3339
from testbed.util import kv

log = logging.getLogger("bench.binder")
SCENARIO = "binder"
JSON = dict[str, Any]
SCHEDULER = "warmlet-scheduler"
TAINT = {"key": "virtual-kubelet.io/provider", "value": "warmlet", "effect": "NoSchedule"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--pods", type=int, default=None, help="pods per run (default 2000; --quick 300)"
    )
    parser.add_argument("--nodes", type=int, default=4, help="warmlet-like Node objects")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds, each binder once (default 2; quick 1)"
    )
    parser.add_argument("--concurrency", type=int, default=50, help="pod POSTs in flight")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for all bound")


def pod(name: str, tag: str, scheduler: str | None) -> JSON:
    spec: JSON = {
        "restartPolicy": "Never",
        "nodeSelector": {"bench-binder": tag},
        "tolerations": [{"key": TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 0,
        "containers": [
            {"name": "job", "image": "127.0.0.1:5000/bench/job:1", "resources": {"requests": {"cpu": "10m"}}}
        ],
    }
    if scheduler:
        spec["schedulerName"] = scheduler
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "job"}},
        "spec": spec,
    }


def node_status(now: float, pods: int) -> JSON:
    ts = rfc3339(now)
    cap = {"cpu": "1000", "memory": "4Ti", "pods": str(pods)}
    return {
        "capacity": cap,
        "allocatable": cap,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "bench heartbeat",
                "lastHeartbeatTime": ts,
                "lastTransitionTime": ts,
            }
        ],
    }


async def heartbeat(client: KubeClient, names: list[str], pods: int) -> None:
    """Keep the Node objects Ready and their Leases fresh (the node lifecycle controller watches)."""
    while True:
        now = time.time()
        for name in names:
            with contextlib.suppress(ApiError):
                await client.patch(f"/api/v1/nodes/{name}/status", {"status": node_status(now, pods)})
            spec = {
                "holderIdentity": name,
                "leaseDurationSeconds": 40,
                "renewTime": rfc3339(now)[:-1] + ".000000Z",
            }
            path = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
            try:
                await client.patch(f"{path}/{name}", {"spec": spec})
            except ApiError as e:
                if e.not_found:
                    with contextlib.suppress(ApiError):
                        await client.post(
                            path,
                            {
                                "apiVersion": "coordination.k8s.io/v1",
                                "kind": "Lease",
                                "metadata": {"name": name},
                                "spec": spec,
                            },
                        )
        await asyncio.sleep(5.0)


@contextlib.asynccontextmanager
async def bench_nodes(client: KubeClient, tag: str, count: int, pods: int) -> Any:
    names = [f"bb-{tag}-{i}" for i in range(count)]
    for name in names:
        labels = {"type": "virtual-kubelet", "bench-binder": tag, "kubernetes.io/hostname": name}
        await client.post(
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels},
                "spec": {"taints": [TAINT]},
            },
        )
    beat = asyncio.create_task(heartbeat(client, names, pods))
    try:
        yield names
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        for name in names:
            with contextlib.suppress(ApiError):
                await client.delete(f"/api/v1/nodes/{name}")


@contextlib.asynccontextmanager
async def binder_process(kubeconfig: str, tag: str, workdir: Path) -> Any:
    """``warmlet placement`` with only the binder, restricted to this bench's nodes."""
    cfg = {
        "kubeconfig": kubeconfig,
        "log_level": "WARNING",
        "placement": {
            "virtual_node_labels": {"type": "virtual-kubelet", "bench-binder": tag},
            "webhook": {"enabled": False},
            "binder": {"enabled": True, "scheduler_name": SCHEDULER},
        },
    }
    path = workdir / "placement.yaml"
    path.write_text(yaml.safe_dump(cfg))
    logf = (workdir / "placement.log").open("wb")
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "provider.cli", "placement", "--config", str(path)],
        cwd=REPO_ROOT,
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        await asyncio.to_thread(stop_process, proc)
        logf.close()


async def bind_run(
    client: KubeClient, tag: str, n: int, scheduler: str | None, concurrency: int, within: float
) -> JSON:
    """Create n pods at once; client-side POST and first-bound times per pod."""
    ns = await create_namespace(client, "bb")
    posted: dict[str, float] = {}
    bound: dict[str, float] = {}
    done = asyncio.Event()
    expect = n + 1

    def observe(etype: str, obj: JSON) -> None:
        if etype != "DELETED" and (obj.get("spec") or {}).get("nodeName"):
            bound.setdefault(obj["metadata"]["name"], time.monotonic())
            if len(bound) >= expect:
                done.set()

    started = asyncio.Event()
    watcher = asyncio.create_task(
        watch_namespace_pods(client, ns, observe, list_first=False, started=started)
    )
    try:
        await started.wait()
        # warm-up: one pod through the same path (the binder's view synced, scheduler caches warm)
        await client.post(f"/api/v1/namespaces/{ns}/pods", pod("warmup", tag, scheduler))
        deadline = time.monotonic() + 120
        while "warmup" not in bound:
            if time.monotonic() > deadline:
                raise TimeoutError(f"warm-up pod not bound (scheduler={scheduler or 'default-scheduler'})")
            await asyncio.sleep(0.05)
        sem = asyncio.Semaphore(concurrency)

        async def create(i: int) -> None:
            name = f"job-{i}"
            async with sem:
                await client.post(f"/api/v1/namespaces/{ns}/pods", pod(name, tag, scheduler))
                posted[name] = time.monotonic()

        t0 = time.monotonic()
        await asyncio.gather(*(create(i) for i in range(n)))
        created = time.monotonic() - t0
        await asyncio.wait_for(done.wait(), within)
        times = [bound[k] for k in posted if k in bound]
        lat = [bound[k] - posted[k] for k in posted if k in bound]
        return {
            "seconds_to_all_bound": round(max(times) - t0, 2),
            "create_seconds": round(created, 2),
            "pods_per_second": round(n / (max(times) - t0), 1),
            "post_to_bound": summarize_ms(lat),
            "bound_at_ms": sorted(round((t - t0) * 1000, 1) for t in times),
        }
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        with contextlib.suppress(Exception):
            await client.request(
                "DELETE", f"/api/v1/namespaces/{ns}/pods", params={"gracePeriodSeconds": 0}, timeout=300
            )
        with contextlib.suppress(Exception):
            await client.delete(f"/api/v1/namespaces/{ns}")


async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    n = args.pods or (300 if quick else 2000)
    rounds = args.rounds or (1 if quick else 2)
    per_node = n // max(1, args.nodes) + 100
    tag = uuid.uuid4().hex[:6]
    runs: dict[str, list[JSON]] = {"warmlet": [], "kube_scheduler": []}
    async with bed_session(args.kubeconfig, args.cri_endpoint) as bed:
        client = await KubeClient.from_kubeconfig(bed.kubeconfig, max_connections=max(64, args.concurrency))
        try:
            with tempfile.TemporaryDirectory(prefix="bench-binder-") as tmp:
                async with (
                    bench_nodes(client, tag, args.nodes, per_node),
                    binder_process(bed.kubeconfig, tag, Path(tmp)),
                ):
                    for r in range(rounds):
                        order = [("warmlet", SCHEDULER), ("kube_scheduler", None)]
                        if r % 2:
                            order.reverse()
                        for label, scheduler in order:
                            log.info(kv("binder bench run", round=r, binder=label, pods=n))
                            res = await bind_run(client, tag, n, scheduler, args.concurrency, args.timeout)
                            runs[label].append(res)
                            log.info(
                                kv("binder bench result", binder=label, seconds=res["seconds_to_all_bound"])
                            )
                            await asyncio.sleep(2.0)
        finally:
            await client.close()

    def best(label: str) -> JSON:
        return min(runs[label], key=lambda x: x["seconds_to_all_bound"])

    w, k = best("warmlet"), best("kube_scheduler")
    result: JSON = {
        "n": n,
        "nodes": args.nodes,
        "rounds": rounds,
        "concurrency": args.concurrency,
        "kube_scheduler_client_qps": "200 (burst 400), testbed/controlplane.py",
        "warmlet": {key: v for key, v in w.items() if key != "bound_at_ms"},
        "kube_scheduler": {key: v for key, v in k.items() if key != "bound_at_ms"},
        "all_rounds_seconds": {label: [x["seconds_to_all_bound"] for x in rs] for label, rs in runs.items()},
        "ratios": {
            "kube_scheduler_over_warmlet_all_bound": ratio(
                k["seconds_to_all_bound"], w["seconds_to_all_bound"]
            ),
            "kube_scheduler_over_warmlet_p50_post_to_bound": ratio(
                k["post_to_bound"]["p50_ms"], w["post_to_bound"]["p50_ms"]
            ),
        },
        "floor_note": "create_seconds is the client's own POST time: no binder can finish before it",
    }
    write_result(SCENARIO, result)
    plot_cdf(
        {"warmlet fast binder": w["bound_at_ms"], "kube-scheduler": k["bound_at_ms"]},
        f"{n} pods created at once: time until bound (best of {rounds})",
        RESULTS_DIR / f"{SCENARIO}.png",
        xlabel="first POST → pod bound (ms, log scale)",
    )
    return result


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    w, k = result.get("warmlet") or {}, result.get("kube_scheduler") or {}
    r = result.get("ratios") or {}
    wp, kp = w.get("post_to_bound") or {}, k.get("post_to_bound") or {}
    return [
        ("pods / nodes", f"{result.get('n')} / {result.get('nodes')}"),
        ("warmlet binder: all bound (s)", str(w.get("seconds_to_all_bound"))),
        ("kube-scheduler: all bound (s)", str(k.get("seconds_to_all_bound"))),
        ("ratio kube-scheduler / warmlet", str(r.get("kube_scheduler_over_warmlet_all_bound"))),
        ("client POSTs alone (s, floor)", f"{w.get('create_seconds')} / {k.get('create_seconds')}"),
        ("POST → bound p50/p99, warmlet (ms)", f"{wp.get('p50_ms')}/{wp.get('p99_ms')}"),
        ("POST → bound p50/p99, kube-scheduler (ms)", f"{kp.get('p50_ms')}/{kp.get('p99_ms')}"),
        ("rounds (s, all)", str(result.get("all_rounds_seconds"))),
    ]


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.binder")
