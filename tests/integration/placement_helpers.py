"""Shared pieces of the placement integration tests: a regular Node the test acts as the kubelet
of, a placement service scoped to one test (its own webhook configuration, namespaces and node
labels, so nothing else in the session is mutated), and a backend whose health a test flips."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from provider.config import PlacementConfig
from provider.kubeclient import STRATEGIC_MERGE_PATCH, ApiError, KubeClient
from provider.placement.service import PlacementService
from provider.placement.webhook import unregister
from provider.timefmt import rfc3339
from sandbox.backend import BackendHealth
from sandbox.simulated import SimulatedBackend
from testbed.testing import create_namespace, list_pods, wait_for

JSON = dict[str, Any]
VIRTUAL_TOLERATION = {"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}


class SwitchableBackend(SimulatedBackend):
    """The simulated backend with a health switch: warmlet then reports the node NotReady."""

    healthy = True

    async def health(self) -> BackendHealth:
        if not self.healthy:
            return BackendHealth(ok=False, reason="TestOutage", message="switched off by the test")
        return await super().health()


def placement_config(tag: str, workdir: Path, **overrides: Any) -> PlacementConfig:
    """Webhook on a free loopback port, limited to namespaces and nodes labelled with ``tag``."""
    cfg = PlacementConfig()
    cfg.virtual_node_labels = {"type": "virtual-kubelet", "placement-test": tag}
    cfg.webhook.enabled = True
    cfg.webhook.port = 0
    cfg.webhook.cert_dir = workdir / "placement-pki"
    cfg.webhook.configuration_name = f"warmlet-placement-{tag}"
    cfg.webhook.namespace_selector = {"placement-test": tag}
    cfg.webhook.timeout_seconds = 5  # 4 other engineers share this 2-core machine
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@contextlib.asynccontextmanager
async def running_placement(cfg: PlacementConfig, kubeconfig: Path) -> AsyncIterator[PlacementService]:
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    svc = PlacementService(cfg, client)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()
        with contextlib.suppress(ApiError):
            await unregister(client, cfg.webhook.configuration_name)
        await client.close()


async def labelled_namespace(client: KubeClient, tag: str) -> str:
    return await create_namespace(client, "pl", {"placement-test": tag})


def ready_status(now: float, pods: str = "110") -> JSON:
    ts = rfc3339(now)
    return {
        "capacity": {"cpu": "8", "memory": "16Gi", "pods": pods},
        "allocatable": {"cpu": "8", "memory": "16Gi", "pods": pods},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "the test is this node's kubelet",
                "lastHeartbeatTime": ts,
                "lastTransitionTime": ts,
            }
        ],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.2"}],
    }


def running_status(pod: JSON, now: float) -> JSON:
    ts = rfc3339(now)
    conds = [
        {"type": t, "status": "True", "lastTransitionTime": ts}
        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
    ]
    return {
        "status": {
            "phase": "Running",
            "conditions": conds,
            "hostIP": "127.0.0.2",
            "podIP": "10.99.0.1",
            "startTime": ts,
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": ts}},
                }
                for c in pod["spec"]["containers"]
            ],
        }
    }


@contextlib.asynccontextmanager
async def regular_node(
    client: KubeClient, name: str, labels: dict[str, str], run_pods_in: str | None = None
) -> AsyncIterator[str]:
    """A Node object with no taint, kept Ready (status + Lease) by the test acting as its kubelet.

    With ``run_pods_in``, pods of that namespace bound to the node are patched Running and Ready.
    """
    await client.post(
        "/api/v1/nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        },
    )

    async def beat() -> None:
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
        while True:
            now = time.time()
            with contextlib.suppress(ApiError):
                await client.patch(f"/api/v1/nodes/{name}/status", {"status": ready_status(now)})
            spec = {
                "holderIdentity": name,
                "leaseDurationSeconds": 40,
                "renewTime": rfc3339(now).replace("Z", ".000000Z"),
            }
            try:
                await client.patch(lease_path, {"spec": spec})
            except ApiError as e:
                if e.not_found:
                    await client.post(
                        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                        {
                            "apiVersion": "coordination.k8s.io/v1",
                            "kind": "Lease",
                            "metadata": {"name": name},
                            "spec": spec,
                        },
                    )
            if run_pods_in:
                for p in await list_pods(client, run_pods_in):
                    if p["spec"].get("nodeName") == name and p["status"].get("phase") != "Running":
                        with contextlib.suppress(ApiError):
                            await client.patch(
                                f"/api/v1/namespaces/{run_pods_in}/pods/{p['metadata']['name']}/status",
                                running_status(p, now),
                                content_type=STRATEGIC_MERGE_PATCH,
                            )
            await asyncio.sleep(1.0 if run_pods_in else 5.0)

    task = asyncio.create_task(beat())
    try:
        await wait_for(lambda: _is_ready(client, name), 30, 0.2, f"regular node {name} Ready")
        yield name
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(ApiError):
            await client.delete(f"/api/v1/nodes/{name}")


async def _is_ready(client: KubeClient, name: str) -> bool:
    node = await client.get(f"/api/v1/nodes/{name}")
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (node.get("status") or {}).get("conditions") or []
    )


def tolerates_virtual(pod: JSON) -> bool:
    return any(t.get("key") == VIRTUAL_TOLERATION["key"] for t in pod["spec"].get("tolerations") or [])


def deployment(
    name: str,
    replicas: int,
    labels: dict[str, str],
    annotations: dict[str, str],
    node_selector: dict[str, str],
    **spec: Any,
) -> JSON:
    pod_spec: JSON = {
        "nodeSelector": node_selector,
        "terminationGracePeriodSeconds": 2,
        "containers": [{"name": "app", "image": "127.0.0.1:5000/sim/app:1"}],
    }
    pod_spec.update(spec)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
