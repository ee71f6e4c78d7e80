"""The bare floor of ``warmlet bench scale``: a minimal node process that only writes Running.

``python -m bench.bare_loop --kubeconfig K --namespace NS --nodes a,b --ready-file F`` watches the
namespace's pods (one list + watch) and, for each new Pending pod bound to one of its nodes,
writes one status patch that already says Running (warmlet's own ``compute_status``: conditions,
container statuses, IPs), ``--workers`` patches in flight. Nothing else: no Node object upkeep, no
Lease, no events, no deletion handling. It runs as its own process, so its resident memory and
CPU time are measured from /proc like KWOK's and warmlet's; what is left of the gap to it is what
a node does beyond the one write per pod. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT, stop_process
from bench.podwatch import watch_namespace_pods
from provider.kubeclient import STRATEGIC_MERGE_PATCH, ApiError, KubeClient
from provider.status import compute_status
from sandbox.backend import ContainerRuntimeState, ContainerState

JSON = dict[str, Any]
POD_NET = ipaddress.IPv4Network("10.128.0.0/9")
READY_FILE = "bare-loop.ready"
LOG_FILE = "bare-loop.log"


def pod_ip(index: int, net: ipaddress.IPv4Network = POD_NET) -> str:
    """The ``index``-th address of ``net`` after the network address (one per pod, no reuse)."""
    return str(net.network_address + 1 + index % (net.num_addresses - 2))


def wants_running(etype: str, pod: Mapping[str, Any], nodes: Collection[str]) -> bool:
    """A pod this loop should write Running for: bound to one of ``nodes``, Pending, not deleting."""
    if etype == "DELETED":
        return False
    meta = pod.get("metadata") or {}
    return (
        (pod.get("spec") or {}).get("nodeName") in nodes
        and (pod.get("status") or {}).get("phase", "Pending") == "Pending"
        and not meta.get("deletionTimestamp")
    )


def running_status(pod: Mapping[str, Any], now: float, ip: str, host_ip: str = "127.0.0.1") -> JSON:
    """The Running status a node writes for ``pod``: every container started ``now``."""
    uid = str((pod.get("metadata") or {}).get("uid", ""))
    states = [
        ContainerRuntimeState(
            container_id=uuid.uuid4().hex,
            pod_uid=uid,
            name=str(c["name"]),
            image=str(c.get("image", "")),
            state=ContainerState.RUNNING,
            created_at=now,
            started_at=now,
        )
        for c in (pod.get("spec") or {}).get("containers") or []
    ]
    return compute_status(pod, states, {}, now, sandbox_ready=True, pod_ip=ip, host_ip=host_ip)


@dataclass
class BareLoop:
    """Pods seen → one Running patch each, ``workers`` in flight."""

    client: KubeClient
    namespace: str
    nodes: frozenset[str]
    workers: int = 64
    queue: asyncio.Queue[JSON] = field(default_factory=asyncio.Queue)
    seen: set[str] = field(default_factory=set)
    patched: int = 0
    errors: int = 0
    next_ip: int = 0

    def on_event(self, etype: str, pod: JSON) -> None:
        uid = str((pod.get("metadata") or {}).get("uid", ""))
        if uid and uid not in self.seen and wants_running(etype, pod, self.nodes):
            self.seen.add(uid)
            self.queue.put_nowait(pod)

    async def writer(self) -> None:
        while True:
            pod = await self.queue.get()
            meta = pod["metadata"]
            ip, self.next_ip = pod_ip(self.next_ip), self.next_ip + 1
            body = {"metadata": {"uid": meta["uid"]}, "status": running_status(pod, time.time(), ip)}
            try:
                await self.client.patch(
                    f"/api/v1/namespaces/{self.namespace}/pods/{meta['name']}/status",
                    body,
                    content_type=STRATEGIC_MERGE_PATCH,
                )
                self.patched += 1
            except (ApiError, TimeoutError):
                self.errors += 1
            finally:
                self.queue.task_done()

    async def run(self, started: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tg:
            for i in range(self.workers):
                tg.create_task(self.writer(), name=f"bare-writer-{i}")
            await watch_namespace_pods(self.client, self.namespace, self.on_event, started=started)


async def main_async(args: argparse.Namespace) -> int:
    client = await KubeClient.from_kubeconfig(args.kubeconfig, max_connections=args.workers + 4)
    loop = BareLoop(client, args.namespace, frozenset(args.nodes.split(",")), args.workers)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    started = asyncio.Event()
    task = asyncio.create_task(loop.run(started), name="bare-loop")
    try:
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()  # raises what stopped it
        await asyncio.to_thread(Path(args.ready_file).write_text, "ready\n")
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({stopper, task}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.close()
    print(json.dumps({"patched": loop.patched, "errors": loop.errors, "seen": len(loop.seen)}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bare_loop", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--nodes", required=True, help="comma-separated node names whose pods it starts")
    p.add_argument("--workers", type=int, default=64, help="status patches in flight")
    p.add_argument("--ready-file", required=True, help="written once the watch is positioned")
    return asyncio.run(main_async(p.parse_args(argv)))


def spawn(
    kubeconfig: str, namespace: str, nodes: Sequence[str], workdir: Path, workers: int
) -> subprocess.Popen[bytes]:
    """Start ``python -m bench.bare_loop`` logging to ``workdir/bare-loop.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / READY_FILE
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.bare_loop", "--kubeconfig", kubeconfig, "--namespace", namespace]
    cmd += ["--nodes", ",".join(nodes), "--workers", str(workers), "--ready-file", str(ready)]
    with open(workdir / LOG_FILE, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,  # a Ctrl-C of the bench does not hit it before we stop it
        )


@contextlib.asynccontextmanager
async def bare_loop_process(
    kubeconfig: str, namespace: str, nodes: Sequence[str], workdir: Path, workers: int = 64
) -> AsyncIterator[subprocess.Popen[bytes]]:
    """The loop as its own process, yielded once it watches; stopped (SIGTERM) on exit."""
    proc = await asyncio.to_thread(spawn, kubeconfig, namespace, nodes, workdir, workers)
    try:
        deadline = time.monotonic() + 60
        while not await asyncio.to_thread((workdir / READY_FILE).exists):
            if proc.poll() is not None:
                raise RuntimeError(f"bench.bare_loop exited {proc.returncode}; log: {workdir / LOG_FILE}")
            if time.monotonic() > deadline:
                raise TimeoutError("bench.bare_loop did not start watching within 60 s")
            await asyncio.sleep(0.1)
        yield proc
    finally:
        await asyncio.to_thread(stop_process, proc)


if __name__ == "__main__":
    sys.exit(main())
