"""The start hold on a CRI node: pods bound with ``warmlet.io/start-at`` get their containers
created (CRI ContainerStatus CREATED) before the instant and started at it, never before; a warmlet
restart during the hold adopts the created containers (never created twice)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from e2e_helpers import E2E, pod_spec, wait_for

from proto import cri_pb2 as pb
from provider.pods import hold
from sandbox.cri import mapping as m
from sandbox.cri.client import CriClient

PODS = 6
LEAD = 30.0


def held_pod(name: str, node: str, image: str, instant: float) -> dict[str, Any]:
    spec = pod_spec(node, "trap 'exit 0' TERM; while true; do sleep 1; done", image)
    spec.pop("nodeSelector")
    spec["nodeName"] = node  # bound directly: no scheduler, no CronJob side needed
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": {hold.START_AT_ANNOTATION: hold.format_millis(instant)}},
        "spec": spec,
    }


def waiting_reason(p: dict[str, Any]) -> str:
    cs = (p.get("status") or {}).get("containerStatuses") or []
    return str(((cs[0].get("state") or {}).get("waiting") or {}).get("reason", "")) if cs else ""


async def cri_states(e2e: E2E, node: str) -> dict[str, pb.ContainerStatus]:
    """ContainerStatus of every container of the node's instance, by container ID."""
    c = CriClient(e2e.cri_endpoint)
    try:
        out = {}
        for ct in await c.list_containers(labels=m.managed_selector(node)):
            out[ct.id] = (await c.container_status(ct.id)).status
        return out
    finally:
        await c.close()


async def test_created_ahead_started_at_the_instant_and_adopted_by_a_restart(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    first = await e2e.start(cfg)
    ns = await e2e.namespace()
    obj = await e2e.client.get(f"/api/v1/nodes/{node}")
    assert obj["metadata"]["labels"]["warmlet.io/holds-start"] == "true"
    instant = round(time.time() + LEAD, 3)
    for i in range(PODS):
        await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", held_pod(f"h{i}", node, e2e.busybox, instant))

    async def all_held() -> list[dict[str, Any]] | None:
        pods = await e2e.pods(ns)
        return pods if len(pods) == PODS and all(waiting_reason(p) == "StartHeld" for p in pods) else None

    pods = await wait_for(all_held, LEAD - 8, 0.5, "every pod held")
    assert all(p["status"]["phase"] == "Pending" for p in pods)
    created = await cri_states(e2e, node)
    assert len(created) == PODS
    assert {s.state for s in created.values()} == {pb.CONTAINER_CREATED}
    assert {s.started_at for s in created.values()} == {0}

    # warmlet restarts during the hold: the created containers are adopted, never created again
    await e2e.stop(first)
    await e2e.start(cfg)
    assert time.time() < instant - 1, "the test bed was too slow to restart during the hold"
    await asyncio.sleep(max(0.0, instant - time.time() - 0.5))
    still = await cri_states(e2e, node)
    assert set(still) == set(created)
    assert {s.state for s in still.values()} == {pb.CONTAINER_CREATED}, "a container started early"

    async def all_running() -> list[dict[str, Any]] | None:
        pods = await e2e.pods(ns)
        ok = all(
            p["status"].get("phase") == "Running"
            and p["metadata"]["annotations"].get(hold.STARTED_AT_ANNOTATION)
            for p in pods
        )
        return pods if ok else None

    pods = await wait_for(all_running, 60, 0.2, "held pods Running")
    started = await cri_states(e2e, node)
    assert set(started) == set(created)  # the very containers created ahead: none twice
    for s in started.values():
        assert s.state == pb.CONTAINER_RUNNING and s.metadata.attempt == 0
        assert s.started_at >= int(instant * 1e9), f"started {instant - s.started_at / 1e9:.3f}s early"
        assert s.started_at <= int((instant + 5.0) * 1e9)  # generous: a loaded 2-core bed
    by_uid = {s.labels[m.LABEL_POD_UID]: s for s in started.values()}
    for p in pods:
        s = by_uid[p["metadata"]["uid"]]
        anns = p["metadata"]["annotations"]
        assert anns["warmlet.io/start-level"] == "precreated"
        assert anns[hold.STARTED_AT_ANNOTATION] == hold.format_millis(s.started_at / 1e9)
        (cs,) = p["status"]["containerStatuses"]
        assert cs["containerID"].split("//")[1] in created and cs["restartCount"] == 0
        # the API's startedAt is kubelet's whole-second metav1.Time
        assert cs["state"]["running"]["startedAt"] == time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(s.started_at // 10**9)
        )
