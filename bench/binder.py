"""Binder benchmark: a backlog of N Job-like pods, time until all are bound — warmlet's fast
binder vs kube-scheduler, same pods, same nodes, same apiserver, one run.

The 00:00 case: thousands of pods exist and wait for a scheduler. Each run creates the N pods
while their scheduler is not running (not timed), then starts it and measures, client-side from
one namespace watch, the time from its start until every pod shows ``spec.nodeName`` (and the
first-to-last binding span). The contenders are real processes: ``warmlet placement`` with only
the binder, and a second kube-scheduler (the bed's binary, flags and client QPS, its own
``schedulerName`` profile, the scheduler's identity). Nodes are Node objects kept Ready by this
bench (status + Lease heartbeats), labelled and tainted like warmlet nodes, with room for every
pod; nobody runs the pods, so only scheduling and binding are measured. Rounds alternate which
contender goes first.

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

from bench.common import RESULTS_DIR, plot_cdf, ratio, write_result
from bench.harness import REPO_ROOT, bed_session, stop_process
from bench.podwatch import watch_namespace_pods
from provider.kubeclient import ApiError, KubeClient
from provider.timefmt import rfc3339
from testbed.testing import create_namespace
from testbed.util import kv

log = logging.getLogger("bench.binder")
SCENARIO = "binder"
JSON = dict[str, Any]
SCHEDULER = "warmlet-scheduler"
KUBE_SCHEDULER = "bench-kube-scheduler"
TAINT = {"key": "virtual-kubelet.io/provider", "value": "warmlet", "effect": "NoSchedule"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--pods", type=int, default=None, help="pods per run (default 2000; --quick 300)"
    )
    parser.add_argument("--nodes", type=int, default=4, help="warmlet-like Node objects")
    parser.add_argument(
        "--rounds", type=int, default=None, help="rounds, each binder once (default 2; quick 1)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="pod POSTs in flight (backlog, not timed)"
    )
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


async def create_backlog(
    client: KubeClient, ns: str, tag: str, n: int, scheduler: str, concurrency: int
) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def create(i: int) -> None:
        async with sem:
            await client.post(f"/api/v1/namespaces/{ns}/pods", pod(f"job-{i}", tag, scheduler))

    t0 = time.monotonic()
    await asyncio.gather(*(create(i) for i in range(n)))
    return time.monotonic() - t0


@contextlib.asynccontextmanager
async def kube_scheduler_process(bed: Any, workdir: Path) -> Any:
    """A second kube-scheduler serving only ``KUBE_SCHEDULER`` (the bed's own keeps running)."""
    from testbed.util import bin_dir, free_port

    kc = bed.kubeconfig
    if bed.testbed is not None:
        candidate = Path(bed.testbed.state_dir) / "controlplane" / "scheduler.kubeconfig"
        kc = str(candidate) if candidate.exists() else kc
    cfg = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": kc, "qps": 200, "burst": 400},
        "leaderElection": {"leaderElect": False},
        "profiles": [{"schedulerName": KUBE_SCHEDULER}],
    }
    path = workdir / "kube-scheduler.yaml"
    path.write_text(yaml.safe_dump(cfg))
    logf = (workdir / "kube-scheduler.log").open("wb")
    args = [
        str(bin_dir() / "kube-scheduler"),
        f"--config={path}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        f"--secure-port={free_port()}",
        "--v=1",
    ]
    proc = await asyncio.to_thread(subprocess.Popen, args, stdout=logf, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        await asyncio.to_thread(stop_process, proc)
        logf.close()


async def drain_run(
    client: KubeClient,
    bed: Any,
    tag: str,
    n: int,
    contender: str,
    concurrency: int,
    within: float,
    workdir: Path,
) -> JSON:
    """Create the backlog, start the contender, time until all bound."""
    scheduler = SCHEDULER if contender == "warmlet" else KUBE_SCHEDULER
    ns = await create_namespace(client, "bb")
    bound: dict[str, float] = {}
    done = asyncio.Event()

    def observe(etype: str, obj: JSON) -> None:
        if etype != "DELETED" and (obj.get("spec") or {}).get("nodeName"):
            bound.setdefault(obj["metadata"]["name"], time.monotonic())
            if len(bound) >= n:
                done.set()

    started = asyncio.Event()
    watcher = asyncio.create_task(
        watch_namespace_pods(client, ns, observe, list_first=False, started=started)
    )
    try:
        await started.wait()
        created = await create_backlog(client, ns, tag, n, scheduler, concurrency)
        await asyncio.sleep(1.0)
        if bound:
            raise RuntimeError(f"{len(bound)} pods were bound before {contender} started")
        if contender == "warmlet":
            proc_cm = binder_process(bed.kubeconfig, tag, workdir)
        else:
            proc_cm = kube_scheduler_process(bed, workdir)
        t0 = time.monotonic()
        async with proc_cm:
            await asyncio.wait_for(done.wait(), within)
        times = sorted(bound.values())
        return {
            "seconds_start_to_all_bound": round(times[-1] - t0, 2),
            "seconds_start_to_first_bound": round(times[0] - t0, 2),
            "seconds_first_to_last_bound": round(times[-1] - times[0], 2),
            "pods_per_second": round(n / max(1e-6, times[-1] - times[0]), 1),
            "backlog_create_seconds": round(created, 2),
            "bound_at_ms": [round((t - t0) * 1000, 1) for t in times],
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
                async with bench_nodes(client, tag, args.nodes, per_node):
                    for r in range(rounds):
                        order = ["warmlet", "kube_scheduler"]
                        if r % 2:
                            order.reverse()
                        for label in order:
                            log.info(kv("binder bench run", round=r, contender=label, pods=n))
                            res = await drain_run(
                                client, bed, tag, n, label, args.concurrency, args.timeout, Path(tmp)
                            )
                            runs[label].append(res)
                            log.info(
                                kv(
                                    "binder bench result",
                                    contender=label,
                                    s=res["seconds_start_to_all_bound"],
                                )
                            )
                            await asyncio.sleep(2.0)
        finally:
            await client.close()

    def median_run(label: str) -> JSON:
        ordered = sorted(runs[label], key=lambda x: x["seconds_start_to_all_bound"])
        return ordered[(len(ordered) - 1) // 2]

    w, k = median_run("warmlet"), median_run("kube_scheduler")
    result: JSON = {
        "n": n,
        "nodes": args.nodes,
        "rounds": rounds,
        "kube_scheduler_client_qps": "200 (burst 400), as the bed's (testbed/controlplane.py)",
        "warmlet": {key: v for key, v in w.items() if key != "bound_at_ms"},
        "kube_scheduler": {key: v for key, v in k.items() if key != "bound_at_ms"},
        "all_rounds_start_to_all_bound": {
            label: [x["seconds_start_to_all_bound"] for x in rs] for label, rs in runs.items()
        },
        "ratios": {
            "kube_scheduler_over_warmlet_start_to_all_bound": ratio(
                k["seconds_start_to_all_bound"], w["seconds_start_to_all_bound"]
            ),
            "kube_scheduler_over_warmlet_first_to_last_bound": ratio(
                k["seconds_first_to_last_bound"], w["seconds_first_to_last_bound"]
            ),
        },
    }
    write_result(SCENARIO, result)
    plot_cdf(
        {"warmlet fast binder": w["bound_at_ms"], "kube-scheduler": k["bound_at_ms"]},
        f"backlog of {n} pods: scheduler start → pod bound (lower median of {rounds} rounds)",
        RESULTS_DIR / f"{SCENARIO}.png",
        xlabel="scheduler process start → pod bound (ms, log scale)",
    )
    return result


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    w, k = result.get("warmlet") or {}, result.get("kube_scheduler") or {}
    r = result.get("ratios") or {}
    return [
        ("pods / nodes", f"{result.get('n')} / {result.get('nodes')}"),
        ("warmlet binder: first → last binding (s)", str(w.get("seconds_first_to_last_bound"))),
        ("kube-scheduler: first → last binding (s)", str(k.get("seconds_first_to_last_bound"))),
        (
            "ratio kube-scheduler / warmlet (drain)",
            str(r.get("kube_scheduler_over_warmlet_first_to_last_bound")),
        ),
        (
            "process start → all bound (s), warmlet / kube-scheduler",
            f"{w.get('seconds_start_to_all_bound')} / {k.get('seconds_start_to_all_bound')}",
        ),
        (
            "ratio kube-scheduler / warmlet (from start)",
            str(r.get("kube_scheduler_over_warmlet_start_to_all_bound")),
        ),
        (
            "bindings per second, warmlet / kube-scheduler",
            f"{w.get('pods_per_second')} / {k.get('pods_per_second')}",
        ),
        (
            "start → first bound (s), warmlet / kube-scheduler",
            f"{w.get('seconds_start_to_first_bound')} / {k.get('seconds_start_to_first_bound')}",
        ),
        ("rounds: start → all bound (s)", str(result.get("all_rounds_start_to_all_bound"))),
    ]


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.binder")
