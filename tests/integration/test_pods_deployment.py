"""A Deployment on the virtual node: scale up to Running, scale down with graceful termination."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provider.kubeclient import KubeClient
from provider.pods.worker import DELETION_COST_ANNOTATION, START_LEVEL_ANNOTATION
from testbed.testing import (
    create_namespace,
    events_for,
    list_pods,
    node_config,
    phase,
    pod_template,
    running_node,
    wait_for,
)

pytestmark = pytest.mark.integration


async def test_deployment_scale_up_and_down(kubeconfig: Any, tmp_path: Path) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.pods.pod_events = "all"  # kubelet's Normal pod events (off by default on a simulated node)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        async with running_node(cfg) as wn:
            ns = await create_namespace(client)
            tmpl = pod_template(cfg.node.name)
            tmpl["metadata"]["labels"] = {"app": "web"}
            dep = {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"replicas": 20, "selector": {"matchLabels": {"app": "web"}}, "template": tmpl},
            }
            await client.post(f"/apis/apps/v1/namespaces/{ns}/deployments", dep)

            async def running(n: int) -> list[dict[str, Any]] | None:
                pods = await list_pods(client, ns, "app=web")
                ok = [p for p in pods if phase(p) == "Running" and not p["metadata"].get("deletionTimestamp")]
                return pods if len(ok) == n and len(pods) == n else None

            pods = await wait_for(lambda: running(20), 90, 0.5, "20 Running replicas")
            for p in pods:
                assert p["spec"]["nodeName"] == cfg.node.name
                ready = {c["type"]: c["status"] for c in p["status"]["conditions"]}
                assert ready["Ready"] == "True" and ready["ContainersReady"] == "True"

            async def annotated() -> bool:
                pods = await list_pods(client, ns, "app=web")
                return all(
                    p["metadata"].get("annotations", {}).get(DELETION_COST_ANNOTATION) == "-1000"
                    and START_LEVEL_ANNOTATION in p["metadata"]["annotations"]
                    for p in pods
                )

            await wait_for(annotated, 30, 0.5, "start-level and deletion-cost annotations")

            await client.patch(f"/apis/apps/v1/namespaces/{ns}/deployments/web", {"spec": {"replicas": 5}})
            await wait_for(lambda: running(5), 90, 0.5, "scale down to 5")
            # graceful termination returned the sandboxes to the warm pool (capped per workload)
            assert wn.backend.idle_sandboxes()  # type: ignore[attr-defined] >= 1

            async def killing() -> list[dict[str, Any]] | None:
                evs = [
                    e
                    for e in await events_for(client, ns, "Killing")
                    if e["source"].get("component") == "warmlet"
                ]
                # events are written asynchronously (rate limited): wait for all of them
                return evs if len({e["involvedObject"]["uid"] for e in evs}) >= 15 else None

            evs = await wait_for(killing, 60, 0.5, "Killing events of the 15 removed pods")
            assert len({e["involvedObject"]["uid"] for e in evs}) == 15
            started = await events_for(client, ns, "Started")
            assert len({e["involvedObject"]["uid"] for e in started}) >= 20
            assert all(e["source"]["host"] == cfg.node.name for e in started)
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()
