"""The virtual Node against a real control plane: registration, lease, health, recreation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from provider.kubeclient import KubeClient
from sandbox.backend import BackendHealth
from sandbox.simulated import SimulatedBackend
from testbed.testing import node_config, running_node, wait_for

pytestmark = pytest.mark.integration


class FlakyBackend(SimulatedBackend):
    """A simulated backend whose health the test switches."""

    healthy = True

    async def health(self) -> BackendHealth:
        if not self.healthy:
            return BackendHealth(ok=False, reason="RuntimeDown", message="containerd socket refused")
        return await super().health()


def cond(node: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in node["status"]["conditions"] if c["type"] == ctype)


async def test_node_registration_lease_health_and_recreation(kubeconfig: Any, tmp_path: Path) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.node.labels = {"example.com/pool": "jobs"}
    cfg.node.extended_resources = {"example.com/gpu": "2"}
    cfg.node.lease_renew_interval_seconds = 1.0
    cfg.node.status_update_interval_seconds = 600  # only condition changes and the watch patch
    backend = FlakyBackend(tmp_path / "logs")
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    name = cfg.node.name
    try:
        async with running_node(cfg, backend=backend) as wn:
            assert wn.node is not None
            wn.node.health_interval = 0.5
            node = await client.get(f"/api/v1/nodes/{name}")
            labels = node["metadata"]["labels"]
            assert labels["type"] == "virtual-kubelet"
            assert labels["kubernetes.io/role"] == "agent"
            assert labels["kubernetes.io/hostname"] == name
            assert labels["kubernetes.io/os"] == "linux" and labels["beta.kubernetes.io/os"] == "linux"
            assert labels["example.com/pool"] == "jobs"
            assert {"key": "virtual-kubelet.io/provider", "value": "warmlet", "effect": "NoSchedule"} in node[
                "spec"
            ]["taints"]
            st = node["status"]
            assert st["capacity"]["cpu"] == "16" and st["capacity"]["pods"] in ("10000", "10k")
            assert st["allocatable"]["example.com/gpu"] == "2"
            assert {a["type"] for a in st["addresses"]} == {"InternalIP", "Hostname"}
            assert st["nodeInfo"]["containerRuntimeVersion"].startswith("simulated://")
            assert st["nodeInfo"]["operatingSystem"] == "linux"
            assert st["nodeInfo"]["kubeletVersion"] == cfg.node.kubelet_version
            assert cond(node, "Ready")["status"] == "True" and cond(node, "Ready")["reason"] == "KubeletReady"
            for c in ("MemoryPressure", "DiskPressure", "PIDPressure", "NetworkUnavailable"):
                assert cond(node, c)["status"] == "False"

            lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
            lease = await client.get(lease_path)
            assert lease["spec"]["holderIdentity"] == name
            assert lease["spec"]["leaseDurationSeconds"] == 40
            assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
            first = lease["spec"]["renewTime"]

            async def renewed() -> bool:
                return bool((await client.get(lease_path))["spec"]["renewTime"] != first)

            await wait_for(renewed, 10, 0.3, "lease renewal")

            # backend unhealthy -> NotReady with a reason; then it recovers
            backend.healthy = False

            async def ready_is(status: str) -> dict[str, Any] | None:
                n = await client.get(f"/api/v1/nodes/{name}")
                return n if cond(n, "Ready")["status"] == status else None

            n = await wait_for(lambda: ready_is("False"), 15, 0.3, "NotReady")
            assert cond(n, "Ready")["reason"] == "KubeletNotReady"
            assert "containerd socket refused" in cond(n, "Ready")["message"]
            backend.healthy = True
            await wait_for(lambda: ready_is("True"), 15, 0.3, "Ready again")

            # the node-lifecycle controller marks it Unknown (as after an apiserver outage): warmlet
            # reports its own view again at once, not at the next periodic update (600 s here)
            unknown = {"type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown", "message": "x"}
            await client.patch(
                f"/api/v1/nodes/{name}/status",
                {"status": {"conditions": [unknown]}},
                content_type="application/strategic-merge-patch+json",
            )
            await wait_for(lambda: ready_is("True"), 30, 0.3, "Ready after someone else wrote Unknown")

            # deleted node is registered again
            old_uid = node["metadata"]["uid"]
            await client.delete(f"/api/v1/nodes/{name}")

            async def recreated() -> bool:
                try:
                    n = await client.get(f"/api/v1/nodes/{name}")
                except Exception:
                    return False
                return bool(n["metadata"]["uid"] != old_uid and cond(n, "Ready")["status"] == "True")

            await wait_for(recreated, 20, 0.3, "node recreation")
            await asyncio.sleep(0)
    finally:
        await client.close()


async def test_takeover_of_existing_node(kubeconfig: Any, tmp_path: Path) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        await client.post(
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": cfg.node.name, "labels": {"stale": "1"}},
            },
        )
        async with running_node(cfg):
            node = await client.get(f"/api/v1/nodes/{cfg.node.name}")
            assert node["metadata"]["labels"]["type"] == "virtual-kubelet"
            assert cond(node, "Ready")["status"] == "True"
            assert "virtual-kubelet.io/provider" in [t["key"] for t in node["spec"]["taints"]]
    finally:
        await client.close()
