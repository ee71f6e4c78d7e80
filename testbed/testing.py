"""Helpers for tests and benches that run warmlet in-process against a real API server.

In ``testbed/`` (not ``provider/``: product code imports no test code; not ``tests/``: the benches
share them) so integration tests, e2e tests, fault tests and benches use the same ones.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from provider.app import WarmletNode
from provider.config import WarmletConfig
from provider.kubeclient import ApiError, KubeClient
from sandbox.backend import Backend
from testbed.wait import wait_for as wait_for  # re-exported: the one wait helper, with the kit

JSON = dict[str, Any]


def node_config(
    kubeconfig: str | Path, workdir: Path, node_name: str | None = None, **pods: Any
) -> WarmletConfig:
    """A config for a simulated node with everything under ``workdir`` and a free port."""
    cfg = WarmletConfig()
    cfg.kubeconfig = Path(kubeconfig)
    cfg.backend = "simulated"
    cfg.node.name = node_name or f"wl-{uuid.uuid4().hex[:8]}"
    cfg.log_dir = workdir / "logs"
    cfg.state_dir = workdir / "state"
    cfg.pods.volumes_dir = workdir / "state" / "pods"
    if Path("/dev/shm").is_dir():
        # memory-backed volumes in a tmpfs dir: no tmpfs mount per volume that a test node
        # stopped with its pods still there would leave behind under a tmp dir
        cfg.pods.memory_volumes_dir = Path("/dev/shm/warmlet-tests") / cfg.node.name
    cfg.server.cert_dir = workdir / "state" / "pki"
    cfg.server.port = 0
    cfg.server.authorization_mode = "AlwaysAllow"
    for k, v in pods.items():
        setattr(cfg.pods, k, v)
    return cfg


@contextlib.asynccontextmanager
async def running_node(
    cfg: WarmletConfig, backend: Backend | None = None, delete_node: bool = True
) -> AsyncIterator[WarmletNode]:
    node = WarmletNode(cfg, backend=backend, serve_kubelet_api=False)
    await node.start()
    try:
        yield node
    finally:
        client = await KubeClient.from_kubeconfig(str(cfg.kubeconfig))
        await node.stop()
        if delete_node:
            with contextlib.suppress(ApiError):
                await client.delete(f"/api/v1/nodes/{cfg.node.name}")
        await client.close()


async def create_namespace(
    client: KubeClient, prefix: str = "wl", labels: dict[str, str] | None = None, name: str = ""
) -> str:
    """A fresh namespace (``name``, else ``<prefix>-<random>``) whose default ServiceAccount
    exists (pods are admitted)."""
    name = name or f"{prefix}-{uuid.uuid4().hex[:6]}"
    meta: JSON = {"name": name, "labels": labels} if labels else {"name": name}
    await client.post("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})

    async def sa() -> bool:
        try:
            await client.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
            return True
        except ApiError:
            return False

    await wait_for(sa, 60, 0.2, "default service account")
    return name


def pod_template(node: str, annotations: dict[str, str] | None = None, **spec: Any) -> JSON:
    """A pod template pinned to the virtual node and tolerating its taint."""
    s: JSON = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 5,
        "containers": [{"name": "app", "image": "127.0.0.1:5000/sim/app:1"}],
    }
    s.update(spec)
    return {"metadata": {"labels": {"app": "x"}, "annotations": annotations or {}}, "spec": s}


def bare_pod(name: str, node: str, annotations: dict[str, str] | None = None, **spec: Any) -> JSON:
    t = pod_template(node, annotations, **spec)
    t["metadata"]["name"] = name
    return {"apiVersion": "v1", "kind": "Pod", **t}


async def list_pods(client: KubeClient, namespace: str, selector: str | None = None) -> list[JSON]:
    params = {"labelSelector": selector} if selector else {}
    items: list[JSON] = (await client.list_all(f"/api/v1/namespaces/{namespace}/pods", **params))["items"]
    return items


def phase(p: JSON) -> str:
    return str((p.get("status") or {}).get("phase", ""))


async def events_for(client: KubeClient, namespace: str, reason: str | None = None) -> list[JSON]:
    items: list[JSON] = (await client.list_all(f"/api/v1/namespaces/{namespace}/events"))["items"]
    return [e for e in items if reason is None or e.get("reason") == reason]


class BatchView:
    """One namespace's CronJobs and Jobs as tests read and edit them (punctual CronJob tests)."""

    def __init__(self, client: KubeClient, ns: str) -> None:
        self.c, self.ns = client, ns

    def cj_path(self, name: str = "") -> str:
        return f"/apis/batch/v1/namespaces/{self.ns}/cronjobs" + (f"/{name}" if name else "")

    def job_path(self, name: str = "") -> str:
        return f"/apis/batch/v1/namespaces/{self.ns}/jobs" + (f"/{name}" if name else "")

    async def cj(self, name: str) -> JSON:
        return await self.c.get(self.cj_path(name))

    async def job(self, name: str) -> JSON | None:
        try:
            return await self.c.get(self.job_path(name))
        except ApiError as e:
            if e.not_found:
                return None
            raise

    async def jobs(self) -> list[JSON]:
        items: list[JSON] = (await self.c.list_all(self.job_path()))["items"]
        return items

    async def jobs_of(self, cj_name: str) -> list[JSON]:
        """Every Job of the CronJob: owned by it or named after it."""
        return [
            j
            for j in await self.jobs()
            if any(r.get("name") == cj_name for r in j["metadata"].get("ownerReferences") or [])
            or j["metadata"]["name"].startswith(f"{cj_name}-")
        ]

    async def edit(self, name: str, fn: Any, subresource: str = "") -> JSON:
        """Read-modify-write of the CronJob (or its ``/status``), again on a conflict."""
        for _ in range(20):
            cur = await self.cj(name)
            fn(cur)
            try:
                return await self.c.put(self.cj_path(name) + subresource, cur)
            except ApiError as e:
                if not e.conflict:
                    raise
        raise AssertionError(f"cronjob {name}: 20 conflicts in a row")
