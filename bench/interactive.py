"""Interactive access: exec round trip and port-forward throughput, warmlet beside a real kubelet.

Both nodes are on the same test bed in the same run: a warmlet CRI node and a real kubelet
v1.36.3 (``bench/kubelet_baseline.py``'s node, with its own containerd on this machine). On each,
one busybox pod runs ``httpd`` serving a ``--mb`` MB file of random bytes (its sha256 computed in
the pod). Measured per node:

- **exec round trip, API**: ``--execs`` sequential ``exec -- true`` sessions opened directly on the
  API server with the WebSocket protocols kubectl offers (``v5.channel.k8s.io``, then
  ``v4.channel.k8s.io``; the negotiated one is recorded), timed from
  the connect to the exit status on the error channel: what the node adds, without a client
  process's start-up.
- **exec round trip, kubectl**: ``--execs`` sequential ``kubectl exec <pod> -- true`` (wall time
  of the whole command: what a user waits for).
- **port-forward throughput**: ``kubectl port-forward`` to the pod's httpd on a loopback port, the
  file downloaded ``--downloads`` times over it; MB/s per download, and the bytes' sha256 checked
  against the pod's own.
- the node agent's CPU seconds during the downloads (warmlet proxies the stream bytes itself;
  kubelet proxies them too, in Go).

Ratios warmlet/kubelet are computed from figures of this one run only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.common import summarize_ms, write_result
from bench.harness import Bed, bed_session, delete_namespace, free_port, owned_pod, warmlet_node
from bench.probes import cpu_seconds, maybe_ratio, pin
from provider.kubeclient import KubeClient
from testbed.testing import create_namespace
from testbed.util import bin_dir

SCENARIO = "interactive"
JSON = dict[str, Any]

HTTP_PORT = 8080
STATUS_CHANNEL = 3  # the remotecommand error/status channel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mb", type=int, default=0, help="size of the served file in MB (default 100)")
    parser.add_argument("--execs", type=int, default=0, help="sequential exec sessions (default 30)")
    parser.add_argument("--downloads", type=int, default=0, help="port-forward downloads (default 3)")
    parser.add_argument("--no-kubelet", action="store_true", help="skip the real kubelet")


# ------------------------------------------------------------------------------------ pure parts


def httpd_pod(name: str, node: str, image: str, mb: int) -> JSON:
    """busybox httpd serving /www/blob (``mb`` MB of random bytes) and /www/blob.sha256."""
    script = (
        f"mkdir -p /www && dd if=/dev/urandom of=/www/blob bs=1048576 count={mb} 2>/dev/null && "
        "sha256sum /www/blob | cut -d' ' -f1 > /www/blob.sha256 && "
        f"exec httpd -f -p {HTTP_PORT} -h /www"
    )
    pod = pin(owned_pod(name, node, image, command=["sh", "-c", script], grace_seconds=1), node)
    pod["spec"]["containers"][0]["readinessProbe"] = {
        "httpGet": {"path": "/blob.sha256", "port": HTTP_PORT},
        "periodSeconds": 1,
    }
    return pod


def exec_status(frames: list[bytes]) -> JSON | None:
    """The Status object a v4/v5.channel.k8s.io session sent on its error channel (None if none)."""
    for f in frames:
        if f[:1] == bytes([STATUS_CHANNEL]) and len(f) > 1:
            try:
                doc = json.loads(f[1:])
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
    return None


def mb_per_second(nbytes: int, seconds: float) -> float:
    return round(nbytes / 1048576 / seconds, 1) if seconds > 0 else 0.0


# ------------------------------------------------------------------------------------ measuring


@dataclass
class Agent:
    label: str
    node: str
    pid: int


Measure = Callable[[Agent], Awaitable[JSON]]


WS_PROTOCOLS = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
WS_REFUSED = {
    406: "the node declares ExtendWebSocketsToKubelet, so the API server hands it the WebSocket "
    "unchanged, and the runtime's streaming server offers no WebSocket protocol (containerd 1.6)"
}


async def ws_exec_once(client: KubeClient, ns: str, pod: str) -> tuple[float, str]:
    """One ``exec -- true`` over the API server's WebSocket: seconds until the exit status, and the
    negotiated protocol."""
    url = (
        f"{client.server}/api/v1/namespaces/{ns}/pods/{pod}/exec"
        "?command=true&stdout=true&stderr=true&container=app"
    )
    t0 = time.perf_counter()
    frames: list[bytes] = []
    async with client.session.ws_connect(url, protocols=WS_PROTOCOLS) as ws:
        protocol = ws.protocol or ""
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                frames.append(msg.data)
                if msg.data[:1] == bytes([STATUS_CHANNEL]):
                    break
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break
    elapsed = time.perf_counter() - t0
    status = exec_status(frames)
    if status is None or status.get("status") != "Success":
        raise RuntimeError(f"exec over WebSocket did not succeed: {status!r}")
    return elapsed, protocol


async def kubectl(kubeconfig: str, *args: str, limit: float = 60) -> tuple[int, bytes]:
    proc = await asyncio.create_subprocess_exec(
        str(bin_dir() / "kubectl"),
        f"--kubeconfig={kubeconfig}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out


async def kubectl_exec_once(kubeconfig: str, ns: str, pod: str) -> float:
    t0 = time.perf_counter()
    rc, out = await kubectl(kubeconfig, "-n", ns, "exec", pod, "-c", "app", "--", "true")
    if rc != 0:
        raise RuntimeError(f"kubectl exec failed rc={rc}: {out.decode(errors='replace')[-300:]}")
    return time.perf_counter() - t0


async def port_forward_downloads(kubeconfig: str, ns: str, pod: str, downloads: int, agent_pid: int) -> JSON:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        str(bin_dir() / "kubectl"),
        f"--kubeconfig={kubeconfig}",
        "-n",
        ns,
        "port-forward",
        f"pod/{pod}",
        f"{port}:{HTTP_PORT}",
        "--address=127.0.0.1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if b"Forwarding from" not in line:
            raise RuntimeError(f"kubectl port-forward did not start: {line.decode(errors='replace')}")
        base = f"http://127.0.0.1:{port}"
        speeds: list[float] = []
        intact = True
        cpu0 = cpu_seconds(agent_pid)
        total = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
            async with s.get(f"{base}/blob.sha256") as r:
                want = (await r.text()).strip()
            for _ in range(downloads):
                h = hashlib.sha256()
                n = 0
                t0 = time.perf_counter()
                async with s.get(f"{base}/blob") as r:
                    r.raise_for_status()
                    async for chunk in r.content.iter_chunked(1 << 20):
                        h.update(chunk)
                        n += len(chunk)
                speeds.append(mb_per_second(n, time.perf_counter() - t0))
                total += n
                intact = intact and h.hexdigest() == want
        cpu = cpu_seconds(agent_pid) - cpu0
        return {
            "downloads": downloads,
            "bytes_each": total // max(downloads, 1),
            "mb_per_second": sorted(speeds),
            "mb_per_second_median": sorted(speeds)[len(speeds) // 2] if speeds else None,
            "intact": intact,
            "agent_cpu_seconds_per_100mb": round(cpu / (total / 104857600), 3) if total else None,
        }
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


async def measure_agent(
    bed: Bed, client: KubeClient, agent: Agent, image: str, mb: int, execs: int, downloads: int
) -> JSON:
    ns = await create_namespace(client, f"interactive-{agent.label}")
    try:
        await client.post(f"/api/v1/namespaces/{ns}/pods", httpd_pod("httpd", agent.node, image, mb))
        rc, out = await kubectl(
            bed.kubeconfig,
            "-n",
            ns,
            "wait",
            "--for=condition=Ready",
            "pod/httpd",
            "--timeout=180s",
            limit=200,
        )
        if rc != 0:
            raise RuntimeError(f"{agent.label}: pod not Ready: {out.decode(errors='replace')}")
        _say(f"{agent.label}: {execs} exec sessions over the API server's WebSocket")
        ws_result: JSON
        try:
            await ws_exec_once(client, ns, "httpd")  # warm-up (connections, caches)
            sessions = [await ws_exec_once(client, ns, "httpd") for _ in range(execs)]
            ws_result = {
                **summarize_ms([t for t, _ in sessions]),
                "protocols": sorted({p for _, p in sessions}),
            }
        except aiohttp.WSServerHandshakeError as e:
            # A node declaring ExtendWebSocketsToKubelet gets the WebSocket itself from the API
            # server; a runtime streaming server without WebSocket protocols answers 406, and
            # kubectl then falls back to SPDY.
            ws_result = {"ran": False, "status": e.status, "reason": WS_REFUSED.get(e.status, e.message)}
            _say(f"{agent.label}: WebSocket exec refused ({e.status}); kubectl falls back to SPDY")
        _say(f"{agent.label}: {execs} kubectl exec")
        kc = [await kubectl_exec_once(bed.kubeconfig, ns, "httpd") for _ in range(execs)]
        _say(f"{agent.label}: port-forward, {downloads} downloads of {mb} MB")
        pf = await port_forward_downloads(bed.kubeconfig, ns, "httpd", downloads, agent.pid)
        return {
            "ran": True,
            "exec_api_ws_ms": ws_result,
            "exec_kubectl_ms": summarize_ms(kc),
            "port_forward": pf,
        }
    finally:
        await delete_namespace(client, ns, 120)


def _say(msg: str) -> None:
    print(f"[interactive] {msg}", flush=True)


async def _warmlet(bed: Bed, measure: Measure) -> JSON:
    async with warmlet_node(bed, "cri") as node:
        assert node.proc is not None
        return await measure(Agent("warmlet", node.name, node.proc.pid))


async def _kubelet(bed: Bed, measure: Measure) -> JSON:
    from bench.kubelet_baseline import KubeletUnavailable, running_kubelet

    name = f"kubelet-interactive-{int(time.time()) % 100000}"
    try:
        async with running_kubelet(bed, name=name) as node:
            return await measure(Agent("kubelet", name, node.procs.procs["kubelet"].pid))
    except KubeletUnavailable as e:
        return {"ran": False, "reason": str(e)}


def _p50(r: JSON, key: str) -> float | None:
    v = r.get(key) or {}
    return v.get("p50_ms") if isinstance(v, dict) else None


async def run(args: argparse.Namespace, quick: bool) -> JSON:
    mb = args.mb or (20 if quick else 100)
    execs = args.execs or (10 if quick else 30)
    downloads = args.downloads or (2 if quick else 3)
    result: JSON = {"quick": quick, "file_mb": mb, "execs": execs, "downloads": downloads}
    async with bed_session(getattr(args, "kubeconfig", None)) as bed:
        if not bed.cri_endpoint:
            raise SystemExit("interactive needs a CRI runtime (the test bed's containerd)")
        client = await KubeClient.from_kubeconfig(bed.kubeconfig)
        image = bed.images.get("busybox", "busybox")
        try:

            async def measure(agent: Agent) -> JSON:
                return await measure_agent(bed, client, agent, image, mb, execs, downloads)

            result["warmlet"] = await _warmlet(bed, measure)
            if not args.no_kubelet:
                result["kubelet"] = await _kubelet(bed, measure)
        finally:
            await client.close()
    w, k = result.get("warmlet") or {}, result.get("kubelet") or {}
    if k.get("ran"):
        wp, kp = w.get("port_forward") or {}, k.get("port_forward") or {}
        result["ratios"] = {
            "exec_api_ws_p50_warmlet_over_kubelet": maybe_ratio(
                _p50(w, "exec_api_ws_ms"), _p50(k, "exec_api_ws_ms")
            ),
            "exec_kubectl_p50_warmlet_over_kubelet": maybe_ratio(
                _p50(w, "exec_kubectl_ms"), _p50(k, "exec_kubectl_ms")
            ),
            "port_forward_throughput_warmlet_over_kubelet": maybe_ratio(
                wp.get("mb_per_second_median"), kp.get("mb_per_second_median")
            ),
        }
    write_result(SCENARIO, result)
    return {"scenario": SCENARIO, **result}


def summary_rows(result: JSON) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key in ("warmlet", "kubelet"):
        r = result.get(key) or {}
        if r.get("ran") is False:
            rows.append((key, f"not run: {r.get('reason')}"))
            continue
        if not r:
            continue
        pf = r.get("port_forward") or {}
        rows.append(
            (
                key,
                f"exec p50 {_p50(r, 'exec_api_ws_ms')} ms (API WebSocket), "
                f"{_p50(r, 'exec_kubectl_ms')} ms (kubectl); port-forward "
                f"{pf.get('mb_per_second_median')} MB/s ({'intact' if pf.get('intact') else 'CORRUPT'})",
            )
        )
    for k, v in (result.get("ratios") or {}).items():
        rows.append((k, str(v)))
    return rows
