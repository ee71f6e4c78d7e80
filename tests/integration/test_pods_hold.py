"""The start hold on a simulated node against the real API server: pods bound with
``warmlet.io/start-at`` a few seconds ahead are prepared and held (Pending, StartHeld), none starts
before the instant, all start within a bound after it, ``activeDeadlineSeconds`` counts from the
instant, and a warmlet restart during the hold adopts the created containers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from provider.kubeclient import KubeClient
from provider.node_object import HOLDS_START_LABEL
from provider.pods import hold
from sandbox.backend import ContainerRuntimeState, ContainerState
from sandbox.simulated import SimulatedBackend
from testbed.testing import bare_pod, create_namespace, list_pods, node_config, phase, running_node, wait_for

pytestmark = pytest.mark.integration


async def _create(client: KubeClient, ns: str, pods: list[dict[str, Any]], width: int = 16) -> None:
    sem = asyncio.Semaphore(width)

    async def one(p: dict[str, Any]) -> None:
        async with sem:
            await client.post(f"/api/v1/namespaces/{ns}/pods", p)

    await asyncio.gather(*(one(p) for p in pods))


def held(name: str, node: str, instant: float, **spec: Any) -> dict[str, Any]:
    """A pod bound to the node (no scheduler: the CronJob side is not needed) with the instant."""
    ann = {hold.START_AT_ANNOTATION: hold.format_millis(instant), **spec.pop("annotations", {})}
    return bare_pod(name, node, ann, nodeName=node, restartPolicy="Never", **spec)


def waiting_reason(p: dict[str, Any]) -> str:
    cs = (p.get("status") or {}).get("containerStatuses") or []
    return str(((cs[0].get("state") or {}).get("waiting") or {}).get("reason", "")) if cs else ""


async def runtime_of(backend: SimulatedBackend, pods: list[dict[str, Any]]) -> list[ContainerRuntimeState]:
    out: list[ContainerRuntimeState] = []
    for p in pods:
        out += await backend.pod_containers(p["metadata"]["uid"])
    return out


async def test_held_pods_start_at_the_instant_never_before(kubeconfig: Any, tmp_path: Path) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    backend = SimulatedBackend(tmp_path / "logs", start_seconds=0.02)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    node = cfg.node.name
    try:
        async with running_node(cfg, backend=backend):
            ns = await create_namespace(client)
            n_obj = await client.get(f"/api/v1/nodes/{node}")
            assert n_obj["metadata"]["labels"][HOLDS_START_LABEL] == "true"
            instant = round(time.time() + 12.0, 3)
            pods = [held(f"h-{i}", node, instant) for i in range(40)]
            pods += [held(f"d-{i}", node, instant, activeDeadlineSeconds=3) for i in range(5)]
            await _create(client, ns, pods)

            async def all_held() -> list[dict[str, Any]] | None:
                ps = await list_pods(client, ns)
                return ps if len(ps) == 45 and all(waiting_reason(p) == "StartHeld" for p in ps) else None

            ps = await wait_for(all_held, 30, 0.2, "every pod held")
            assert time.time() < instant, "the test bed was too slow to hold the pods ahead"
            assert all(phase(p) == "Pending" for p in ps)
            runtime = await runtime_of(backend, ps)
            assert len(runtime) == 45 and {c.state for c in runtime} == {ContainerState.CREATED}
            # a deadline of 3 s, the pod bound ~10 s ahead: counted from the instant, not startTime
            await asyncio.sleep(max(0.0, instant - time.time() - 0.3))
            runtime = await runtime_of(backend, ps)
            assert {c.state for c in runtime} == {ContainerState.CREATED}, "a container started early"

            async def all_started() -> list[ContainerRuntimeState] | None:
                rt = await runtime_of(backend, ps)
                return rt if all(c.started_at is not None for c in rt) else None

            runtime = await wait_for(all_started, 10, 0.05, "every container started")
            starts = [c.started_at or 0.0 for c in runtime]
            assert min(starts) >= instant
            assert max(starts) <= instant + 1.0, f"last start {max(starts) - instant:.3f}s after the instant"

            async def settled() -> list[dict[str, Any]] | None:
                ps = await list_pods(client, ns)
                ok = all(
                    phase(p) == ("Failed" if p["metadata"]["name"].startswith("d-") else "Running")
                    for p in ps
                )
                return ps if ok else None

            ps = await wait_for(settled, 30, 0.2, "held pods Running, deadline pods Failed")
            for p in ps:
                anns = p["metadata"]["annotations"]
                assert anns["warmlet.io/start-level"] == "precreated"
                started_at = hold.parse_instant(anns[hold.STARTED_AT_ANNOTATION])
                assert started_at is not None and instant <= started_at <= instant + 1.0
                if p["metadata"]["name"].startswith("d-"):
                    assert p["status"]["reason"] == "DeadlineExceeded"
            deadline_runtime = await runtime_of(
                backend, [p for p in ps if p["metadata"]["name"].startswith("d-")]
            )
            # killed no sooner than 3 s after the instant (startTime was ~10 s before it)
            assert all((c.finished_at or 0.0) >= instant + 3.0 for c in deadline_runtime)
    finally:
        await client.close()


async def test_restart_during_the_hold_adopts_the_created_containers(kubeconfig: Any, tmp_path: Path) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    backend = SimulatedBackend(tmp_path / "logs")  # the runtime outlives warmlet, as containerd does
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    node = cfg.node.name
    try:
        async with running_node(cfg, backend=backend, delete_node=False) as first:
            ns = await create_namespace(client)
            instant = round(time.time() + 15.0, 3)
            await _create(client, ns, [held(f"r-{i}", node, instant) for i in range(20)])

            async def all_held() -> list[dict[str, Any]] | None:
                ps = await list_pods(client, ns)
                return ps if len(ps) == 20 and all(waiting_reason(p) == "StartHeld" for p in ps) else None

            ps = await wait_for(all_held, 30, 0.2, "every pod held")
            before = {c.container_id for c in await runtime_of(backend, ps)}
            assert len(before) == 20
            await first.crash()
        assert time.time() < instant - 3, "the test bed was too slow to restart during the hold"
        async with running_node(cfg, backend=backend):
            await asyncio.sleep(max(0.0, instant - time.time() - 0.3))
            runtime = await runtime_of(backend, ps)
            assert {c.container_id for c in runtime} == before  # adopted, never created again
            assert {c.state for c in runtime} == {ContainerState.CREATED}

            async def all_running() -> list[dict[str, Any]] | None:
                ps = await list_pods(client, ns)
                return ps if all(phase(p) == "Running" for p in ps) else None

            await wait_for(all_running, 30, 0.2, "held pods Running after the restart")
            runtime = await runtime_of(backend, ps)
            assert {c.container_id for c in runtime} == before and len(runtime) == 20
            assert all(instant <= (c.started_at or 0.0) <= instant + 1.0 for c in runtime)
    finally:
        await client.close()


async def test_two_thousand_simulated_pods_start_within_a_second(kubeconfig: Any, tmp_path: Path) -> None:
    """Issue 16's simulated goal: 2,000 held pods of one instant all started within 1 s of it, with
    the midnight-burst bench's simulated start time (60 ms per StartContainer)."""
    cfg = node_config(kubeconfig, tmp_path, workers=64)
    backend = SimulatedBackend(tmp_path / "logs", start_seconds=0.06)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    node = cfg.node.name
    n = 2000
    try:
        async with running_node(cfg, backend=backend):
            ns = await create_namespace(client)
            instant = round(time.time() + 90.0, 3)
            await _create(client, ns, [held(f"m-{i}", node, instant) for i in range(n)], width=32)

            async def all_held() -> bool:
                return (
                    len(backend.pool.by_pod) == n
                    and sum(1 for p in await list_pods(client, ns) if waiting_reason(p) == "StartHeld") == n
                )

            await wait_for(all_held, 85, 1.0, "2000 pods held")
            assert time.time() < instant
            await asyncio.sleep(max(0.0, instant - time.time() + 1.5))
            starts = [c.started_at for c in await runtime_of(backend, await list_pods(client, ns))]
            assert len(starts) == n and all(s is not None for s in starts)
            late = sorted((s or 0.0) - instant for s in starts)
            assert late[0] >= 0, "a container started before the instant"
            assert late[-1] <= 1.0, f"p50 {late[n // 2]:.3f}s, max {late[-1]:.3f}s after the instant"
    finally:
        await client.close()
