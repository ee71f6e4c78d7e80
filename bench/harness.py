"""Shared plumbing of the benchmark scenarios: a cluster, a warmlet node, a pod clock.

Why one module: every scenario needs the same three things and they are easy to get subtly
wrong (a warmlet that is not Ready yet, a pod deleted but its sandbox not back in the pool,
latencies measured on the server clock instead of what a user sees).

The scenario interface (``bench/<module>.py``, run by ``warmlet bench``, see ``bench/cli.py``)::

    SCENARIO: str                                   # e.g. "cold-vs-warm"
    def add_arguments(parser: argparse.ArgumentParser) -> None
    async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]
        # runs, writes bench/results/<SCENARIO>.json (+ PNG beside it) via bench.common,
        # returns the result dict
    def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]

``bench/cli.py`` adds the common options of :func:`add_common_arguments` (``--kubeconfig``,
``--cri-endpoint``) before calling ``add_arguments``: scenarios must not add them again.

Building blocks:

- ``async with bed_session(kubeconfig) as bed``: the given cluster, else the CLI test bed when
  ``python -m testbed status`` says one is up, else a private ``TestBed`` for the run (torn down
  afterwards; an attached bed is left running).
- ``async with warmlet_node(bed, backend="cri", **pool) as node``: a ``warmlet run`` subprocess
  (realistic: own process, own event loop, real CLI and config file) or, with
  ``inprocess=True``, a ``WarmletNode`` in this event loop. Yields once the Node is Ready; on exit
  stops it, deletes the Node and removes the CRI sandboxes it left (idle pool members).
- pod timing (``PodClock``, ``PodTimes``) is in :mod:`bench.podwatch`.
- ``owner_configmap``/``owned_pod``: bare pods whose controller reference points at an object no
  controller manages, which gives them a stable workload key (``provider.workload`` keys unknown
  controller kinds by the owner) without a controller recreating or deleting anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from provider.kubeclient import ApiError, KubeClient
from testbed.testing import create_namespace, pod_template
from testbed.util import kv

log = logging.getLogger("bench.harness")
JSON = dict[str, Any]
REPO_ROOT = Path(__file__).resolve().parent.parent
# A container that stays running and exits promptly on TERM (sh is PID 1: no default TERM action).
HOLD_COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every scenario understands (added by bench/cli.py, not by scenarios)."""
    parser.add_argument(
        "--kubeconfig",
        default=None,
        help="cluster to use (default: the running test bed, else a test bed started for the run)",
    )
    parser.add_argument(
        "--cri-endpoint",
        default=os.environ.get("WARMLET_CRI_ENDPOINT"),
        help="CRI socket when --kubeconfig names a cluster outside the test bed",
    )


def command_line(scenario: str, quick: bool, extra: list[str] | None = None) -> str:
    """The command that reproduces a result (recorded in the JSON and in RESULTS.md)."""
    parts = ["warmlet", "bench", scenario, *(["--quick"] if quick else []), *(extra or [])]
    return shlex.join(parts)


# ---------------------------------------------------------------------------- cluster


@dataclass
class Bed:
    """What a scenario needs of a cluster + runtime, whoever runs them."""

    kubeconfig: str  # admin
    cri_endpoint: str = ""
    registry: str = ""
    images: dict[str, str] = field(default_factory=dict)
    testbed: Any = None  # testbed.bed.TestBed when the cluster is the test bed
    owned: bool = False  # True: started for this run (stopped at the end)

    @property
    def is_testbed(self) -> bool:
        return self.testbed is not None

    def node_kubeconfig(self, node_name: str) -> str:
        """Credentials warmlet runs with.

        The admin kubeconfig, as a virtual kubelet runs with a ServiceAccount bound to a broad
        ClusterRole: a ``system:node:<name>`` identity may not patch pod annotations (start
        level, deletion cost) nor list CronJobs (prewarming) under the Node authorizer.
        """
        return self.kubeconfig

    def client_ca(self) -> str:
        return str(self.testbed.client_ca_cert) if self.testbed is not None else ""


def cli_bed_running() -> bool:
    """True when ``python -m testbed status`` reports a healthy CLI bed (slot 0)."""
    r = subprocess.run(
        [sys.executable, "-m", "testbed", "status"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=30,
    )
    return r.returncode == 0


def _bed_from_testbed(tb: Any, owned: bool) -> Bed:
    return Bed(
        kubeconfig=str(tb.admin_kubeconfig),
        cri_endpoint=f"unix://{tb.containerd_socket}",
        registry=str(tb.registry),
        images=dict(tb.images),
        testbed=tb,
        owned=owned,
    )


@contextlib.asynccontextmanager
async def bed_session(kubeconfig: str | None = None, cri_endpoint: str | None = None) -> AsyncIterator[Bed]:
    """The given cluster, else the running CLI bed, else a private test bed for the run."""
    if kubeconfig:
        yield Bed(
            kubeconfig=kubeconfig,
            cri_endpoint=cri_endpoint or os.environ.get("WARMLET_CRI_ENDPOINT", ""),
            registry=os.environ.get("WARMLET_REGISTRY", ""),
            images={
                k: os.environ[f"WARMLET_IMAGE_{k.upper()}"]
                for k in ("pause", "busybox", "fat")
                if f"WARMLET_IMAGE_{k.upper()}" in os.environ
            },
        )
        return
    from testbed.bed import TestBed, TestBedInfo

    if await asyncio.to_thread(cli_bed_running):
        tb = TestBed.attach(TestBedInfo.load())
        log.info(kv("bench uses the running test bed", slot=tb.slot, api=tb.apiserver_url))
        yield _bed_from_testbed(tb, owned=False)
        return
    log.info(kv("bench starts a test bed for the run"))
    tb = await asyncio.to_thread(TestBed().start)
    try:
        yield _bed_from_testbed(tb, owned=True)
    finally:
        await asyncio.to_thread(tb.stop)


# ---------------------------------------------------------------------------- warmlet node


def free_port() -> int:
    """A TCP port free on loopback right now (the kubelet API binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class NodeHandle:
    """A running warmlet node: its name, kubelet API port, files, and how it runs."""

    name: str
    port: int
    workdir: Path
    config_path: Path
    log_path: Path
    backend: str
    kubeconfig: str  # the node identity's
    proc: subprocess.Popen[bytes] | None = None
    node: Any = None  # provider.app.WarmletNode when in-process

    @property
    def metrics_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/metrics"


def node_config_dict(
    bed: Bed,
    name: str,
    workdir: Path,
    port: int,
    backend: str,
    pool: dict[str, Any],
    node: dict[str, Any] | None = None,
) -> JSON:
    """The YAML config of a bench/demo warmlet (everything under ``workdir``; ``node`` overrides
    go to the config's ``node`` section)."""
    cfg: JSON = {
        "kubeconfig": bed.node_kubeconfig(name),
        "backend": backend,
        "log_dir": str(workdir / "logs"),
        "state_dir": str(workdir / "state"),
        "log_level": "INFO",
        "node": {"name": name, "internal_ip": "127.0.0.1", **(node or {})},
        "pods": {"volumes_dir": str(workdir / "state" / "pods")},
        "server": {"address": "127.0.0.1", "port": port, "cert_dir": str(workdir / "state" / "pki")},
        "pool": dict(pool),
    }
    if bed.client_ca():
        cfg["server"]["client_ca_file"] = bed.client_ca()
    if backend == "cri":
        if not bed.cri_endpoint:
            raise ValueError("the CRI backend needs a runtime endpoint (--cri-endpoint)")
        cfg["cri"] = {"runtime_endpoint": bed.cri_endpoint}
    return cfg


async def wait_node_ready(client: KubeClient, name: str, within: float = 120.0) -> JSON:
    """Until the Node exists with condition Ready=True."""
    deadline = time.monotonic() + within
    while True:
        with contextlib.suppress(ApiError):
            node = await client.get(f"/api/v1/nodes/{name}")
            conds = (node.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                return node
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {name} not Ready after {within}s")
        await asyncio.sleep(0.2)


async def _wait_ready_or_exit(client: KubeClient, h: NodeHandle, within: float = 120.0) -> None:
    """Node Ready, or an error with the log tail if the subprocess died first."""
    ready = asyncio.create_task(wait_node_ready(client, h.name, within))
    try:
        while not ready.done():
            if h.proc is not None and h.proc.poll() is not None:
                tail = h.log_path.read_text(errors="replace")[-3000:] if h.log_path.exists() else ""
                raise RuntimeError(f"warmlet exited rc={h.proc.returncode} before Ready:\n{tail}")
            await asyncio.wait({ready}, timeout=0.2)
        ready.result()
    finally:
        ready.cancel()


@contextlib.asynccontextmanager
async def warmlet_node(
    bed: Bed,
    backend: str = "cri",
    *,
    name: str | None = None,
    inprocess: bool = False,
    workdir: Path | None = None,
    cleanup_runtime: bool = True,
    node: dict[str, Any] | None = None,
    **pool: Any,
) -> AsyncIterator[NodeHandle]:
    """A warmlet node on ``bed`` (``pool`` overrides go to the config's ``pool`` section)."""
    name = name or f"bench-{uuid.uuid4().hex[:6]}"
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"warmlet-{name}-"))
    port = free_port()
    cfg = node_config_dict(bed, name, workdir, port, backend, pool, node)
    config_path = workdir / "warmlet.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    handle = NodeHandle(
        name, port, workdir, config_path, workdir / "warmlet.log", backend, str(cfg["kubeconfig"])
    )
    client = await KubeClient.from_kubeconfig(bed.kubeconfig)
    try:
        await _start_node(handle, inprocess)
        await _wait_ready_or_exit(client, handle)
        log.info(kv("warmlet node ready", node=name, backend=backend, port=port, log=handle.log_path))
        yield handle
    finally:
        await _stop_node(handle)
        with contextlib.suppress(ApiError):
            await client.delete(f"/api/v1/nodes/{name}")
        await client.close()
        if cleanup_runtime and backend == "cri" and bed.cri_endpoint:
            removed = await remove_instance_sandboxes(bed.cri_endpoint, name)
            log.info(kv("warmlet node cleaned up", node=name, sandboxes_removed=removed))


async def _start_node(h: NodeHandle, inprocess: bool) -> None:
    """Start ``warmlet run --config`` as a subprocess (default) or a WarmletNode in this loop."""
    if inprocess:
        from provider.app import WarmletNode
        from provider.config import load_config

        h.node = WarmletNode(load_config(h.config_path))
        await h.node.start()
        return
    h.proc = spawn_warmlet(h.config_path, h.log_path)


def spawn_warmlet(config_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """``python -m provider.cli run --config`` (the ``warmlet run`` command) logging to a file: the one
    way the benches and the demo start a warmlet process."""
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "provider.cli", "run", "--config", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            start_new_session=True,  # a Ctrl-C of the bench does not hit it before we stop it
        )


async def _stop_node(h: NodeHandle) -> None:
    if h.node is not None:
        await h.node.stop()
        h.node = None
    if h.proc is not None:
        await asyncio.to_thread(stop_process, h.proc)
        h.proc = None


def stop_process(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM (warmlet shuts down cleanly), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


async def remove_instance_sandboxes(cri_endpoint: str, instance: str) -> int:
    """Stop and remove every sandbox a (stopped) warmlet instance left in the runtime."""
    from sandbox.cri.client import CriClient
    from sandbox.cri.mapping import managed_selector

    cri = CriClient(cri_endpoint)
    n = 0
    try:
        for sb in await cri.list_pod_sandbox(labels=managed_selector(instance)):
            with contextlib.suppress(Exception):
                await cri.stop_pod_sandbox(sb.id)
                await cri.remove_pod_sandbox(sb.id)
                n += 1
    finally:
        await cri.close()
    return n


# ---------------------------------------------------------------------------- pods


async def bench_namespace(client: KubeClient, prefix: str) -> str:
    """A fresh namespace (its default ServiceAccount exists, so pods are admitted)."""
    return await create_namespace(client, prefix)


async def delete_namespace(client: KubeClient, ns: str, wait: float = 120.0) -> bool:
    """Delete a namespace and wait until it is gone (its pods released by their node)."""
    with contextlib.suppress(ApiError):
        await client.delete(f"/api/v1/namespaces/{ns}")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            await client.get(f"/api/v1/namespaces/{ns}")
        except ApiError as e:
            if e.not_found:
                return True
        await asyncio.sleep(0.5)
    return False


async def owner_configmap(client: KubeClient, ns: str, name: str) -> JSON:
    """A ConfigMap to act as a pod's controller: no controller manages it, so nothing interferes.

    Returns the ownerReference (controller: true) to put on pods of that "workload".
    """
    cm = await client.post(
        f"/api/v1/namespaces/{ns}/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"bench": "owner"}},
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": name,
        "uid": cm["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": False,
    }


def owned_pod(
    name: str,
    node: str,
    image: str,
    owner: JSON | None = None,
    command: list[str] | None = None,
    grace_seconds: int = 5,
) -> JSON:
    """A pod pinned to ``node``; with ``owner`` its workload key is the owner's (warm reuse)."""
    t = pod_template(
        node,
        terminationGracePeriodSeconds=grace_seconds,
        containers=[
            {
                "name": "app",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": command or HOLD_COMMAND,
            }
        ],
    )
    meta: JSON = {**t["metadata"], "name": name}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": t["spec"]}
