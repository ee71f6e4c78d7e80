"""Probes at scale: what probing costs a node agent, warmlet beside a real kubelet, in one run.

Three parts, all on the same test bed in the same run:

- **simulated**: ``--sim-pods`` (default 1,000) pods on a simulated warmlet node, each with an
  exec readiness probe and an exec liveness probe every ``--period`` seconds (default 10: 200
  probes/s at 1,000 pods). The simulated backend runs the probes' state machines, scheduler and
  status for real; only the command's outcome is simulated.
- **cri**: ``--cri-pods`` (default 200) busybox pods running ``httpd``, each with an httpGet
  readiness probe and an exec liveness probe (``cat`` of the served file) every ``--period``
  seconds, on a warmlet CRI node and then on a real kubelet v1.36.3 (``bench/kubelet_baseline.py``'s
  node: its own containerd on this machine) with the same pods.

For each node: the agent process's CPU seconds (``/proc/<pid>/stat``) over a ``--window`` of
steady probing divided by the probes it ran in that window (also net of the agent's own idle
background CPU, measured on the same node before the probed pods exist) (its own ``prober_probe_total`` at
``/metrics/probes``, scraped with the bed's admin client certificate), the CPU of the containerd
serving it, the time until every probed pod was Ready, and the effect of the probing load on pod
start latency: ``--starts`` probe-less pods started one at a time (POST → Running) on the idle
node, then again while the probed pods are being probed. Ratios warmlet/kubelet are computed from
figures of this one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import ratio, summarize_ms, write_result
from bench.demo import admin_client_cert
from bench.harness import (
    HOLD_COMMAND,
    Bed,
    bed_session,
    delete_namespace,
    owned_pod,
    warmlet_node,
)
from bench.podwatch import PodClock
from bench.procstat import parse_stat_cpu_seconds
from provider.kubeclient import KubeClient
from testbed.testing import create_namespace

SCENARIO = "probes"
JSON = dict[str, Any]

HTTPD_COMMAND = ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
_PROBE_TOTAL_RE = re.compile(r"^prober_probe_total\{[^}]*\}\s+([0-9.eE+-]+)\s*$", re.M)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sim-pods", type=int, default=0, help="simulated probed pods (default 1000)")
    parser.add_argument("--cri-pods", type=int, default=0, help="CRI probed pods per node (default 200)")
    parser.add_argument("--period", type=int, default=10, help="probe periodSeconds")
    parser.add_argument("--window", type=float, default=0, help="seconds of steady probing measured")
    parser.add_argument("--starts", type=int, default=0, help="probe-less pods timed, idle and loaded")
    parser.add_argument("--no-kubelet", action="store_true", help="skip the real kubelet")


# ------------------------------------------------------------------------------------ pure parts


def probe_total(metrics_text: str) -> float:
    """The sum of every ``prober_probe_total`` sample of a Prometheus text exposition."""
    return sum(float(v) for v in _PROBE_TOTAL_RE.findall(metrics_text))


def cpu_seconds(pid: int) -> float:
    return parse_stat_cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def per_probe_ms(cpu: float, probes: float) -> float | None:
    return round(cpu / probes * 1000, 3) if probes > 0 else None


def probed_sim_pod(name: str, node: str, period: int) -> JSON:
    pod = owned_pod(name, node, "busybox", command=HOLD_COMMAND, grace_seconds=1)
    c = pod["spec"]["containers"][0]
    c["readinessProbe"] = {"exec": {"command": ["true"]}, "periodSeconds": period}
    c["livenessProbe"] = {"exec": {"command": ["true"]}, "periodSeconds": period, "failureThreshold": 3}
    return pod


def probed_cri_pod(name: str, node: str, image: str, period: int) -> JSON:
    pod = owned_pod(name, node, image, command=HTTPD_COMMAND, grace_seconds=1)
    c = pod["spec"]["containers"][0]
    c["ports"] = [{"name": "http", "containerPort": 8080}]
    c["readinessProbe"] = {"httpGet": {"path": "/index.html", "port": "http"}, "periodSeconds": period}
    c["livenessProbe"] = {
        "exec": {"command": ["cat", "/www/index.html"]},
        "periodSeconds": period,
        "failureThreshold": 3,
    }
    return pod


def pin(pod: JSON, node: str) -> JSON:
    pod["spec"]["nodeName"] = node
    pod["spec"].pop("nodeSelector", None)
    pod["spec"].pop("tolerations", None)
    return pod


# ------------------------------------------------------------------------------------ measuring


@dataclass
class Agent:
    """A node agent under test: its Node name, process id, probe counter and containerd pid."""

    label: str
    node: str
    pid: int
    metrics_url: str
    containerd_pid: int | None
    image: str
    make_pod: Callable[[str], JSON]


Measure = Callable[[Agent], Awaitable[JSON]]


def containerd_pid(socket_path: str) -> int | None:
    """The containerd process serving ``socket_path`` (from /proc cmdlines)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (d / "cmdline").read_bytes().split(b"\0")
            if cmd and cmd[0].endswith(b"containerd") and socket_path.encode() in b" ".join(cmd):
                return int(d.name)
    return None


async def scrape(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url) as r:
        r.raise_for_status()
        return probe_total(await r.text())


async def ready_count(client: KubeClient, ns: str) -> int:
    pods = (await client.list_all(f"/api/v1/namespaces/{ns}/pods")).get("items") or []
    return sum(
        1
        for p in pods
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    )


async def start_latencies(client: KubeClient, ns: str, agent: Agent, n: int, tag: str) -> list[float]:
    """``n`` probe-less pods one at a time: POST → Running seconds."""
    out: list[float] = []
    async with PodClock(client, ns) as clock:
        for i in range(n):
            name = f"start-{tag}-{i}"
            pod = pin(owned_pod(name, agent.node, agent.image, grace_seconds=1), agent.node)
            await clock.create(pod)
            t = await clock.wait(name, "running", 180)
            if t.start_seconds is not None:
                out.append(t.start_seconds)
            await clock.delete_and_wait_gone(name, 120)
    return out


async def measure_agent(
    client: KubeClient,
    session: aiohttp.ClientSession,
    agent: Agent,
    pods: int,
    window: float,
    starts: int,
    log: Callable[[str], None],
) -> JSON:
    ns = await create_namespace(client, f"probes-{agent.label}")
    try:
        idle = await start_latencies(client, ns, agent, starts, "idle")
        # the agent's own background CPU (lease, node status, relists) with no probed pod
        quiet = min(window, 20.0)
        q0, qt = cpu_seconds(agent.pid), time.monotonic()
        await asyncio.sleep(quiet)
        background = (cpu_seconds(agent.pid) - q0) / (time.monotonic() - qt)
        log(f"{agent.label}: creating {pods} probed pods")
        t0 = time.monotonic()
        sem = asyncio.Semaphore(20)

        async def create(i: int) -> None:
            async with sem:
                await client.post(f"/api/v1/namespaces/{ns}/pods", pin(agent.make_pod(f"p-{i}"), agent.node))

        await asyncio.gather(*(create(i) for i in range(pods)))
        deadline = t0 + max(300.0, pods * 1.5)
        ready = 0
        while time.monotonic() < deadline:
            ready = await ready_count(client, ns)
            if ready >= pods:
                break
            await asyncio.sleep(1.0)
        all_ready_s = time.monotonic() - t0 if ready >= pods else None
        log(f"{agent.label}: {ready}/{pods} Ready; measuring {window:.0f} s of probing")
        await asyncio.sleep(min(window, 10.0))  # settle
        p0, c0 = await scrape(session, agent.metrics_url), cpu_seconds(agent.pid)
        d0 = cpu_seconds(agent.containerd_pid) if agent.containerd_pid else None
        w0 = time.monotonic()
        await asyncio.sleep(window)
        p1, c1 = await scrape(session, agent.metrics_url), cpu_seconds(agent.pid)
        d1 = cpu_seconds(agent.containerd_pid) if agent.containerd_pid else None
        elapsed = time.monotonic() - w0
        loaded = await start_latencies(client, ns, agent, starts, "loaded")
        probes, cpu = p1 - p0, c1 - c0
        net = max(0.0, cpu - background * elapsed)
        return {
            "pods": pods,
            "ready": ready,
            "all_ready_seconds": round(all_ready_s, 1) if all_ready_s is not None else None,
            "window_seconds": round(elapsed, 1),
            "probes": int(probes),
            "probes_per_second": round(probes / elapsed, 1),
            "agent_cpu_seconds": round(cpu, 3),
            "agent_cpu_per_probe_ms": per_probe_ms(cpu, probes),
            "agent_cpu_percent": round(cpu / elapsed * 100, 1),
            "agent_background_cpu_percent": round(background * 100, 2),
            "agent_net_cpu_per_probe_ms": per_probe_ms(net, probes),
            "containerd_cpu_per_probe_ms": per_probe_ms(d1 - d0, probes) if d0 is not None and d1 else None,
            "start_idle": summarize_ms(idle) if idle else None,
            "start_loaded": summarize_ms(loaded) if loaded else None,
            "start_slowdown_p50": maybe_ratio(_p50(loaded), _p50(idle)),
        }
    finally:
        await delete_namespace(client, ns, 300)


def _p50(v: list[float]) -> float | None:
    return sorted(v)[len(v) // 2] if v else None


def maybe_ratio(a: float | None, b: float | None) -> float | None:
    return ratio(a, b) if a is not None and b is not None else None


def _say(msg: str) -> None:
    print(f"[probes] {msg}", flush=True)


def _ssl(bed: Bed) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the node's own serving certificate; the client cert matters
    cert = admin_client_cert(bed.kubeconfig)
    if cert:
        ctx.load_cert_chain(cert[0], cert[1])
    return ctx


async def _warmlet(bed: Bed, backend: str, args: argparse.Namespace, measure: Measure) -> JSON:
    image = bed.images.get("busybox", "busybox")
    async with warmlet_node(bed, backend) as node:
        assert node.proc is not None
        make: Callable[[str], JSON]
        if backend == "simulated":

            def make(name: str) -> JSON:
                return probed_sim_pod(name, node.name, args.period)

        else:

            def make(name: str) -> JSON:
                return probed_cri_pod(name, node.name, image, args.period)

        sock = (bed.cri_endpoint or "").removeprefix("unix://")
        agent = Agent(
            f"warmlet-{backend}",
            node.name,
            node.proc.pid,
            f"https://127.0.0.1:{node.port}/metrics/probes",
            containerd_pid(sock) if backend == "cri" and sock else None,
            image,
            make,
        )
        return await measure(agent)


async def _kubelet(bed: Bed, pods: int, args: argparse.Namespace, measure: Measure) -> JSON:
    from bench.kubelet_baseline import KubeletUnavailable, running_kubelet

    name = f"kubelet-probes-{int(time.time()) % 100000}"
    image = bed.images.get("busybox", "busybox")
    try:
        async with running_kubelet(bed, name=name, extra={"maxPods": max(110, pods + 20)}) as node:
            agent = Agent(
                "kubelet",
                name,
                node.procs.procs["kubelet"].pid,
                f"{node.api_url}/metrics/probes",
                containerd_pid(str(node.containerd.socket)),
                image,
                lambda n: probed_cri_pod(n, name, image, args.period),
            )
            return {"ran": True, **await measure(agent)}
    except KubeletUnavailable as e:
        return {"ran": False, "reason": str(e)}


async def run(args: argparse.Namespace, quick: bool) -> JSON:
    sim_pods = args.sim_pods or (100 if quick else 1000)
    cri_pods = args.cri_pods or (20 if quick else 200)
    window = args.window or (20.0 if quick else 60.0)
    starts = args.starts or (3 if quick else 10)
    result: JSON = {"quick": quick, "period_seconds": args.period, "window_seconds": window}
    async with bed_session(getattr(args, "kubeconfig", None)) as bed:
        client = await KubeClient.from_kubeconfig(bed.kubeconfig)
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ssl(bed)))
        try:

            def measure_with(pods: int) -> Callable[[Agent], Awaitable[JSON]]:
                async def m(agent: Agent) -> JSON:
                    return await measure_agent(client, session, agent, pods, window, starts, _say)

                return m

            result["simulated"] = await _warmlet(bed, "simulated", args, measure_with(sim_pods))
            if bed.cri_endpoint:
                result["cri_warmlet"] = await _warmlet(bed, "cri", args, measure_with(cri_pods))
                if not args.no_kubelet:
                    result["cri_kubelet"] = await _kubelet(bed, cri_pods, args, measure_with(cri_pods))
        finally:
            await session.close()
            await client.close()
    w, k = result.get("cri_warmlet") or {}, result.get("cri_kubelet") or {}
    if k.get("ran"):
        result["ratios"] = {
            "agent_cpu_per_probe_warmlet_over_kubelet": maybe_ratio(
                w.get("agent_cpu_per_probe_ms"), k.get("agent_cpu_per_probe_ms")
            ),
            "agent_net_cpu_per_probe_warmlet_over_kubelet": maybe_ratio(
                w.get("agent_net_cpu_per_probe_ms"), k.get("agent_net_cpu_per_probe_ms")
            ),
            "start_slowdown_p50_warmlet_over_kubelet": maybe_ratio(
                w.get("start_slowdown_p50"), k.get("start_slowdown_p50")
            ),
        }
    write_result(SCENARIO, result)
    return {"scenario": SCENARIO, **result}


def summary_rows(result: JSON) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key in ("simulated", "cri_warmlet", "cri_kubelet"):
        r = result.get(key) or {}
        if r.get("ran") is False:
            rows.append((key, f"not run: {r.get('reason')}"))
            continue
        if not r:
            continue
        rows.append(
            (
                key,
                f"{r.get('pods')} pods, {r.get('probes_per_second')} probes/s, "
                f"{r.get('agent_cpu_per_probe_ms')} ms CPU/probe ({r.get('agent_cpu_percent')}% CPU; "
                f"net of idle background {r.get('agent_net_cpu_per_probe_ms')} ms), "
                f"start p50 x{r.get('start_slowdown_p50')} under load",
            )
        )
    for k, v in (result.get("ratios") or {}).items():
        rows.append((k, str(v)))
    return rows
