"""The fast binder against the real apiserver: capacity, unschedulable pods, retries when capacity
frees up, Scheduled/FailedScheduling events, and idempotence on conflicts (a pod bound by someone
else, two binders racing for the same pods)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from placement_helpers import placement_config, running_placement

from provider.kubeclient import KubeClient
from provider.placement.binder import _Pending, binding_body
from provider.placement.metrics import BINDINGS
from provider.placement.service import PlacementService
from testbed.testing import create_namespace, events_for, list_pods, node_config, running_node, wait_for

pytestmark = pytest.mark.integration
JSON = dict[str, Any]


def sched_pod(name: str, scheduler: str, cpu: str | None = None) -> JSON:
    c: JSON = {"name": "app", "image": "127.0.0.1:5000/sim/app:1"}
    if cpu:
        c["resources"] = {"requests": {"cpu": cpu}}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "burst"}},
        "spec": {"schedulerName": scheduler, "terminationGracePeriodSeconds": 1, "containers": [c]},
    }


def binder_config(unique: str, tmp_path: Path) -> Any:
    cfg = placement_config(unique, tmp_path)
    cfg.webhook.enabled = False
    cfg.binder.enabled = True
    cfg.binder.scheduler_name = f"warmlet-sched-{unique}"
    cfg.binder.retry_seconds = 2.0
    return cfg


def scheduled_cond(p: JSON) -> JSON:
    return next((c for c in p["status"].get("conditions") or [] if c["type"] == "PodScheduled"), {})


async def create_all(client: KubeClient, ns: str, pods: list[JSON]) -> None:
    await asyncio.gather(*(client.post(f"/api/v1/namespaces/{ns}/pods", p) for p in pods))


async def test_binder_binds_within_capacity_and_marks_the_rest_unschedulable(
    kubeconfig: Path, tmp_path: Path, unique: str
) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.node.labels = {"placement-test": unique}
    cfg.node.pods, cfg.node.cpu = "20", "2"
    pcfg = binder_config(unique, tmp_path)
    sched = pcfg.binder.scheduler_name
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        async with running_node(cfg), running_placement(pcfg, kubeconfig):
            ns = await create_namespace(client, "bind")
            # a pod asking for more CPU than the node has never fits
            await create_all(client, ns, [sched_pod("big", sched, cpu="3")])

            async def big_unschedulable() -> JSON | None:
                p = await client.get(f"/api/v1/namespaces/{ns}/pods/big")
                return p if scheduled_cond(p).get("status") == "False" else None

            big = await wait_for(big_unschedulable, 60, 0.5, "big pod marked unschedulable")
            assert scheduled_cond(big)["reason"] == "Unschedulable"
            assert "Insufficient cpu" in scheduled_cond(big)["message"]
            assert not big["spec"].get("nodeName")

            # 24 small pods on a node with 20 pod slots: 20 bound, 4 unschedulable (Too many pods)
            await create_all(client, ns, [sched_pod(f"p-{i}", sched) for i in range(24)])

            async def settled() -> list[JSON] | None:
                pods = await list_pods(client, ns)
                bound = [p for p in pods if p["spec"].get("nodeName")]
                waiting = [p for p in pods if scheduled_cond(p).get("status") == "False"]
                return pods if len(bound) == 20 and len(waiting) == 5 else None

            pods = await wait_for(settled, 120, 0.5, "20 bound and 5 unschedulable")
            assert {p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName")} == {cfg.node.name}
            small_waiting = [
                p for p in pods if p["metadata"]["name"] != "big" and not p["spec"].get("nodeName")
            ]
            assert len(small_waiting) == 4
            assert all("Too many pods" in scheduled_cond(p)["message"] for p in small_waiting)

            async def events() -> tuple[list[JSON], list[JSON]] | None:
                ok = [
                    e
                    for e in await events_for(client, ns, "Scheduled")
                    if e["source"].get("component") == sched
                ]
                bad = await events_for(client, ns, "FailedScheduling")
                return (ok, bad) if len(ok) >= 20 and len(bad) >= 5 else None

            ok, _ = await wait_for(events, 60, 0.5, "Scheduled and FailedScheduling events")
            assert all(e["message"].startswith(f"Successfully assigned {ns}/") for e in ok)

            # freeing three slots binds three of the waiting pods (not the big one)
            bound_names = [p["metadata"]["name"] for p in pods if p["spec"].get("nodeName")][:3]
            for name in bound_names:
                await client.delete(f"/api/v1/namespaces/{ns}/pods/{name}")

            async def rebound() -> list[JSON] | None:
                pods = await list_pods(client, ns)
                small = [
                    p
                    for p in pods
                    if p["metadata"]["name"] != "big" and p["metadata"]["name"] not in bound_names
                ]
                unbound = [p for p in small if not p["spec"].get("nodeName")]
                return pods if len(small) == 21 and len(unbound) == 1 else None

            pods = await wait_for(rebound, 120, 0.5, "3 waiting pods bound after capacity freed")
            big = next(p for p in pods if p["metadata"]["name"] == "big")
            assert not big["spec"].get("nodeName")
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()


async def test_binder_is_idempotent_on_conflicts(kubeconfig: Path, tmp_path: Path, unique: str) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.node.labels = {"placement-test": unique}
    pcfg = binder_config(unique, tmp_path)
    sched = pcfg.binder.scheduler_name
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        async with running_node(cfg):
            ns = await create_namespace(client, "bind")

            # a pod bound by someone else before this binder got to it: 409 → done, not an error
            created = await client.post(f"/api/v1/namespaces/{ns}/pods", sched_pod("taken", sched))
            await client.post(
                f"/api/v1/namespaces/{ns}/pods/taken/binding", binding_body(created, cfg.node.name)
            )
            idle = PlacementService(pcfg, client)  # not started: only its binder's bind call is used
            assert idle.binder is not None
            conflicts = BINDINGS.labels(result="conflict")._value.get()
            errors = BINDINGS.labels(result="error")._value.get()
            idle.binder.pending[created["metadata"]["uid"]] = _Pending(created, time.monotonic())
            assert (
                await idle.binder._bind(idle.binder.pending[created["metadata"]["uid"]], cfg.node.name)
                is False
            )
            assert BINDINGS.labels(result="conflict")._value.get() == conflicts + 1
            assert not idle.binder.pending
            await idle.stop()

            # two binders (an HA pair) racing for the same 60 pods: each bound exactly once, no errors
            async with running_placement(pcfg, kubeconfig) as a, running_placement(pcfg, kubeconfig) as b:
                await create_all(client, ns, [sched_pod(f"r-{i}", sched) for i in range(60)])

                async def all_bound() -> list[JSON] | None:
                    pods = [p for p in await list_pods(client, ns) if p["metadata"]["name"].startswith("r-")]
                    return pods if len(pods) == 60 and all(p["spec"].get("nodeName") for p in pods) else None

                await wait_for(all_bound, 120, 0.5, "60 pods bound")
                assert a.binder is not None and b.binder is not None
                assert a.binder.bound + b.binder.bound == 60  # the loser of each race saw a 409
            assert BINDINGS.labels(result="error")._value.get() == errors
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()
