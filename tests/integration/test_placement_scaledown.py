"""Scale-down priority: a Deployment spread over a regular Node and warmlet's virtual node loses
its virtual-node pods first (warmlet sets a lower controller.kubernetes.io/pod-deletion-cost).

The regular node is a Node object whose kubelet is the test: it keeps the node Ready and patches
the pods bound there Running and Ready, so both halves rank alike except for the deletion cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from placement_helpers import VIRTUAL_TOLERATION, deployment, regular_node

from provider.kubeclient import KubeClient
from provider.pods.worker import DELETION_COST_ANNOTATION
from testbed.testing import create_namespace, list_pods, node_config, running_node, wait_for

pytestmark = pytest.mark.integration
JSON = dict[str, Any]


def ready(p: JSON) -> bool:
    return p["status"].get("phase") == "Running" and any(
        c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or []
    )


async def test_scale_down_removes_virtual_node_pods_first(
    kubeconfig: Path, tmp_path: Path, unique: str
) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    sel = {"placement-test": unique}
    cfg.node.labels = dict(sel)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        ns = await create_namespace(client, "scaledown")
        async with running_node(cfg), regular_node(client, f"reg-{unique}", sel, run_pods_in=ns) as reg:
            spread = [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "web"}},
                }
            ]
            dep = deployment(
                "web",
                6,
                {"app": "web"},
                {},
                sel,
                tolerations=[VIRTUAL_TOLERATION],
                topologySpreadConstraints=spread,
            )
            await client.post(f"/apis/apps/v1/namespaces/{ns}/deployments", dep)

            async def spread_and_ready() -> list[JSON] | None:
                pods = await list_pods(client, ns, "app=web")
                if len(pods) != 6 or not all(ready(p) for p in pods):
                    return None
                virtual = [p for p in pods if p["spec"]["nodeName"] == cfg.node.name]
                costed = all(
                    (p["metadata"].get("annotations") or {}).get(DELETION_COST_ANNOTATION) == "-1000"
                    for p in virtual
                )
                return pods if len(virtual) == 3 and costed else None

            pods = await wait_for(spread_and_ready, 120, 0.5, "6 Ready pods, 3 per node, virtual ones costed")
            assert sorted(p["spec"]["nodeName"] for p in pods) == sorted([reg] * 3 + [cfg.node.name] * 3)
            virtual_uids = {p["metadata"]["uid"] for p in pods if p["spec"]["nodeName"] == cfg.node.name}

            await client.patch(f"/apis/apps/v1/namespaces/{ns}/deployments/web", {"spec": {"replicas": 3}})

            async def scaled() -> list[JSON] | None:
                pods = [
                    p
                    for p in await list_pods(client, ns, "app=web")
                    if not p["metadata"].get("deletionTimestamp")
                ]
                return pods if len(pods) == 3 else None

            kept = await wait_for(scaled, 120, 0.5, "3 replicas left")
            assert {p["spec"]["nodeName"] for p in kept} == {reg}
            assert not virtual_uids & {p["metadata"]["uid"] for p in kept}
        await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()
