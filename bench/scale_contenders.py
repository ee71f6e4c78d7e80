"""The three node processes ``warmlet bench scale`` runs side by side: warmlet, KWOK, the bare loop.

Each contender is an async context manager that starts its node process for one case (N nodes x
M pods) and yields a :class:`NodeProcess`: the pid whose /proc is sampled, the node names the
bench binds its pods to, and whether the process confirms pod deletion (the bare loop does not:
its pods are force-deleted afterwards). Same API server, same pods, same machine, one after the
other in one run.

Many nodes in one warmlet process come from the config's ``nodes`` section;
:func:`multinode_section` is the one place that writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bare_loop import bare_loop_process
from bench.harness import Bed
from bench.kwok import KwokInstall, kwok_process
from bench.rbac_node import warmlet_process
from provider.kubeclient import ApiError, KubeClient
from provider.node_object import node_ready

JSON = dict[str, Any]
CONTENDERS = ("warmlet", "kwok", "bare")
_CASE_RE = re.compile(r"^(?:(\d+)x)?(\d+)$")


@dataclass(frozen=True)
class Case:
    """``nodes`` nodes with ``pods_per_node`` pods each, all served by one node process."""

    nodes: int
    pods_per_node: int

    @property
    def pods(self) -> int:
        return self.nodes * self.pods_per_node

    @property
    def label(self) -> str:
        """``"10000"`` for one node, ``"100x100"`` for many."""
        return str(self.pods_per_node) if self.nodes == 1 else f"{self.nodes}x{self.pods_per_node}"

    def node_of(self, index: int, names: list[str]) -> str:
        """The node pod ``index`` is bound to: consecutive blocks of ``pods_per_node``."""
        return names[min(index // self.pods_per_node, len(names) - 1)]


def parse_case(text: str) -> Case:
    """``"1000"`` → one node x 1000 pods; ``"100x100"`` → 100 nodes x 100 pods."""
    m = _CASE_RE.match(text.strip())
    if not m:
        raise ValueError(f"case {text!r}: want PODS or NODESxPODS (e.g. 10000, 100x100)")
    nodes, per = int(m.group(1) or 1), int(m.group(2))
    if nodes < 1 or per < 1:
        raise ValueError(f"case {text!r}: nodes and pods must be at least 1")
    return Case(nodes, per)


@dataclass(frozen=True)
class NodeProcess:
    """A running contender: the process to sample and the nodes it serves."""

    pid: int
    nodes: list[str]
    confirms_deletion: bool


@dataclass
class RunContext:
    """What every contender needs of the run."""

    bed: Bed
    client: KubeClient  # admin
    workdir: Path
    kwok: KwokInstall | None = None  # set once KWOK has run (for the result's provenance)


# ------------------------------------------------------------------------------- warmlet


def multinode_section(case: Case) -> JSON:
    """The config's ``nodes`` section for ``case`` (a count; node names derive from node.name)."""
    return {"count": case.nodes}


async def wait_prefixed_nodes_ready(
    client: KubeClient, prefix: str, count: int, proc: subprocess.Popen[bytes], within: float = 180.0
) -> list[str]:
    """The ``count`` Ready nodes whose name starts with ``prefix``, once there are that many."""
    deadline = time.monotonic() + within
    while True:
        items = (await client.list_all("/api/v1/nodes")).get("items") or []
        ready = sorted(
            n["metadata"]["name"] for n in items if n["metadata"]["name"].startswith(prefix) and node_ready(n)
        )
        if len(ready) >= count:
            return ready[:count]
        if proc.poll() is not None:
            raise RuntimeError(f"warmlet exited {proc.returncode} before its {count} nodes were Ready")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(ready)} of {count} warmlet nodes named {prefix}* Ready after {within:.0f}s"
            )
        await asyncio.sleep(0.5)


@contextlib.asynccontextmanager
async def run_warmlet(ctx: RunContext, case: Case, ns: str) -> AsyncIterator[NodeProcess]:
    """``warmlet run`` (simulated backend, zero timers) under the documented RBAC identity."""
    pool = {"cron_prewarm": False}
    node = {"pods": str(case.pods_per_node + 1000)}
    if case.nodes == 1:
        async with warmlet_process(ctx.bed, "simulated", pool, node=node) as h:
            assert h.proc is not None
            yield NodeProcess(h.proc.pid, [h.name], confirms_deletion=True)
        return
    sections = {"nodes": multinode_section(case)}
    names: list[str] = []
    try:
        async with warmlet_process(
            ctx.bed, "simulated", pool, node=node, sections=sections, wait_ready=False
        ) as h:
            assert h.proc is not None
            names = await wait_prefixed_nodes_ready(ctx.client, h.name, case.nodes, h.proc)
            yield NodeProcess(h.proc.pid, names, confirms_deletion=True)
    finally:
        for name in names:  # warmlet_process deletes the node named node.name only
            with contextlib.suppress(ApiError):
                await ctx.client.delete(f"/api/v1/nodes/{name}")


# ------------------------------------------------------------------------------- KWOK, bare loop


@contextlib.asynccontextmanager
async def run_kwok(ctx: RunContext, case: Case, ns: str) -> AsyncIterator[NodeProcess]:
    """KWOK's controller with its default fast Stages, managing ``case.nodes`` fresh Nodes."""
    workdir = ctx.workdir / "kwok"
    async with kwok_process(ctx.client, ctx.bed.kubeconfig, case.nodes, workdir) as (proc, names, inst):
        ctx.kwok = inst
        yield NodeProcess(proc.pid, names, confirms_deletion=True)


def bare_node(name: str) -> JSON:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


@contextlib.asynccontextmanager
async def run_bare(ctx: RunContext, case: Case, ns: str) -> AsyncIterator[NodeProcess]:
    """``case.nodes`` kubelet-less Nodes and the bare status loop (bench/bare_loop.py) for them."""
    stamp = f"{int(time.time()) % 100000:05d}"
    names = [f"bare-{stamp}-{i:03d}" for i in range(case.nodes)]
    try:
        for name in names:
            await ctx.client.post("/api/v1/nodes", bare_node(name))
        async with bare_loop_process(ctx.bed.kubeconfig, ns, names, ctx.workdir / "bare") as proc:
            yield NodeProcess(proc.pid, names, confirms_deletion=False)
    finally:
        for name in names:
            with contextlib.suppress(ApiError):
                await ctx.client.delete(f"/api/v1/nodes/{name}")


Runner = Callable[[RunContext, Case, str], AbstractAsyncContextManager[NodeProcess]]
RUNNERS: dict[str, Runner] = {"warmlet": run_warmlet, "kwok": run_kwok, "bare": run_bare}

DESCRIPTIONS = {
    "warmlet": "warmlet run --config (simulated backend, zero timers, defaults: pods.workers=64), own "
    "process, under kind-config/rbac.yaml's ClusterRole",
    "kwok": "KWOK's controller (kwok), built from the Go module proxy by scripts/build-kwok.sh, with its "
    "default fast Stages (kustomize/stage/fast) via --config, managing this run's Nodes by annotation, "
    "own process, admin credentials",
    "bare": "bench/bare_loop.py: one list+watch of the namespace and one Running status patch per pod "
    "(64 in flight), nothing else; own process, admin credentials",
}
