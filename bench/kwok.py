"""KWOK as a contender of ``warmlet bench scale``: its controller (``kwok``) against the same API server.

The binary and its default fast Stages come from scripts/build-kwok.sh (built from the Go module
proxy, Stages copied unchanged from the module's kustomize/stage/fast, both cached under
$WARMLET_CACHE/kwok-<version>/). KWOK runs as it ships, as its own process: no rate limit of its
own (it sets none), its default parallelism, the Stages given with ``--config``, managing the nodes
the bench creates with an annotation of this run (``--manage-nodes-with-annotation-selector``), with
the bed's admin credentials (KWOK's documented deployment binds it to a broad ClusterRole too).
Pod IPs from one /16 (KWOK's default pool is a /24, too small for 10,000 pods on one node).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT, stop_process
from provider.kubeclient import ApiError, KubeClient
from provider.node_object import node_ready

JSON = dict[str, Any]
KWOK_VERSION = os.environ.get("WARMLET_KWOK_VERSION", "v0.8.0")
ANNOTATION = "kwok.x-k8s.io/node"  # KWOK's own convention (its kwokctl manages "=fake")
POD_CIDR = "10.0.0.0/16"
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-kwok.sh"


def cache_dir(env: dict[str, str] | None = None, version: str = KWOK_VERSION) -> Path:
    """$WARMLET_CACHE/kwok-<version> (default ~/.cache/warmlet/kwok-<version>)."""
    e = os.environ if env is None else env
    base = Path(e.get("WARMLET_CACHE") or Path(e.get("HOME", str(Path.home()))) / ".cache" / "warmlet")
    return base / f"kwok-{version}"


@dataclass(frozen=True)
class KwokInstall:
    """The cached KWOK: its binary, its Stage files (in the kustomization's order) and their source."""

    binary: Path
    stages: tuple[Path, ...]
    source: str  # stages/SOURCE: module, version, path and sha256 of each Stage file

    @classmethod
    def find(cls, root: Path | None = None) -> KwokInstall | None:
        """The install under ``root`` (default :func:`cache_dir`), or None when incomplete."""
        root = root or cache_dir()
        binary = root / "bin" / "kwok"
        stages = tuple(sorted((root / "stages").glob("*.yaml")))
        source = root / "stages" / "SOURCE"
        if not (binary.is_file() and os.access(binary, os.X_OK) and stages and source.is_file()):
            return None
        return cls(binary, stages, source.read_text())

    def stage_names(self) -> list[str]:
        return [p.name for p in self.stages]


def ensure_installed() -> KwokInstall:
    """The cached KWOK, building it first (scripts/build-kwok.sh, cached) when missing."""
    found = KwokInstall.find()
    if found is not None:
        return found
    subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, cwd=REPO_ROOT)
    found = KwokInstall.find()
    if found is None:
        raise RuntimeError(f"{BUILD_SCRIPT} ran but {cache_dir()} has no bin/kwok and stages/*.yaml")
    return found


def kwok_args(install: KwokInstall, kubeconfig: str, selector_value: str, cidr: str = POD_CIDR) -> list[str]:
    """The command line of the KWOK controller managing the nodes annotated ``ANNOTATION=selector_value``."""
    return [
        str(install.binary),
        f"--kubeconfig={kubeconfig}",
        f"--config={','.join(str(p) for p in install.stages)}",
        f"--manage-nodes-with-annotation-selector={ANNOTATION}={selector_value}",
        f"--cidr={cidr}",
        "--node-ip=127.0.0.1",
    ]


def fake_node(name: str, selector_value: str) -> JSON:
    """A Node object for KWOK to manage (its node-initialize Stage writes the status)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {ANNOTATION: selector_value, "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
    }


async def wait_nodes_ready(client: KubeClient, names: Sequence[str], within: float = 120.0) -> None:
    """Until every named Node has Ready=True (polled by one list)."""
    want = set(names)
    deadline = time.monotonic() + within
    while True:
        nodes = (await client.list_all("/api/v1/nodes")).get("items") or []
        ready = {n["metadata"]["name"] for n in nodes if n["metadata"]["name"] in want and node_ready(n)}
        if ready == want:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(want - ready)} of {len(want)} KWOK nodes not Ready after {within:.0f}s")
        await asyncio.sleep(0.5)


def spawn(args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    """Start KWOK logging to ``workdir/kwok.log``, with ``HOME=workdir``: KWOK also loads
    ~/.kwok/kwok.yaml when it exists, and the bench's runs see none."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "kwok.log", "wb") as log_file:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(workdir)},
            start_new_session=True,  # a Ctrl-C of the bench does not hit it before we stop it
        )


@contextlib.asynccontextmanager
async def kwok_process(
    client: KubeClient, kubeconfig: str, nodes: int, workdir: Path
) -> AsyncIterator[tuple[subprocess.Popen[bytes], list[str], KwokInstall]]:
    """``nodes`` Nodes managed by one KWOK controller process; yields (process, node names, install)
    once all are Ready. On exit: KWOK stopped, the Nodes deleted (their Leases follow by owner)."""
    install = await asyncio.to_thread(ensure_installed)
    run_id = uuid.uuid4().hex[:6]
    names = [f"kwok-{run_id}-{i:03d}" for i in range(nodes)]
    selector = f"bench-{run_id}"
    log_path = workdir / "kwok.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        for name in names:
            await client.post("/api/v1/nodes", fake_node(name, selector))
        proc = await asyncio.to_thread(spawn, kwok_args(install, kubeconfig, selector), workdir)
        await wait_nodes_ready(client, names)
        if proc.poll() is not None:
            raise RuntimeError(f"kwok exited {proc.returncode}; log: {log_path}")
        yield proc, names, install
    finally:
        if proc is not None:
            await asyncio.to_thread(stop_process, proc)
        for name in names:
            with contextlib.suppress(ApiError):
                await client.delete(f"/api/v1/nodes/{name}")
