"""Helpers of the e2e tests: the whole warmlet (WarmletNode, CRI backend, kubelet API) on the real test bed.

Every test gets its own node name (= the CRI backend's ownership instance label), work dir and
namespaces, so tests never see each other's pods or sandboxes even on the shared containerd; the
fixture stops the nodes and removes every sandbox/container of its instances afterwards.
Everything is awaited by polling with generous limits: nothing asserts on wall-clock durations.
"""

from __future__ import annotations

import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY

from provider.app import WarmletNode
from provider.config import WarmletConfig
from provider.kubeclient import ApiError, KubeClient
from sandbox.cri import mapping as m
from sandbox.cri.client import CriClient
from testbed.testing import create_namespace, node_config, wait_for

JSON = dict[str, Any]
LEVEL = "warmlet.io/start-level"


def pod_spec(node: str, command: str, image: str, restart: str = "Never", **extra: Any) -> JSON:
    """A pod spec pinned to ``node`` running ``sh -c command`` in ``image``."""
    spec: JSON = {
        "nodeSelector": {"kubernetes.io/hostname": node},
        "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists", "effect": "NoSchedule"}],
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": False,
        "restartPolicy": restart,
        "containers": [{"name": "main", "image": image, "command": ["sh", "-c", command]}],
    }
    spec.update(extra)
    return spec


def job(name: str, spec: JSON, **job_spec: Any) -> JSON:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"metadata": {"labels": {"e2e": name}}, "spec": spec},
            **job_spec,
        },
    }


def metric(name: str, **labels: str) -> float:
    return float(REGISTRY.get_sample_value(name, labels) or 0.0)


def start_count(level: str) -> float:
    return metric("warmlet_pod_start_latency_seconds_count", level=level)


class E2E:
    """Per-test handle: admin client, namespaces, warmlet nodes on the bed's containerd."""

    def __init__(
        self, client: KubeClient, kubeconfig: Path, tmp: Path, testbed: Any, cri_endpoint: str
    ) -> None:
        self.client = client
        self.kubeconfig = kubeconfig
        self.tmp = tmp
        self.testbed = testbed
        self.cri_endpoint = cri_endpoint
        self.busybox: str = testbed.images["busybox"]
        self.registry: str = testbed.registry
        self.nodes: list[WarmletNode] = []
        self.instances: set[str] = set()
        self.namespaces: list[str] = []

    # ------------------------------------------------------------------ warmlet
    def config(self, name: str | None = None, **pool: Any) -> WarmletConfig:
        """A CRI-backed node config with its work dir under the test's tmp dir."""
        name = name or f"e2e-{uuid.uuid4().hex[:8]}"
        cfg = node_config(self.kubeconfig, self.tmp / name, node_name=name)
        cfg.backend = "cri"
        cfg.cri.runtime_endpoint = self.cri_endpoint
        cfg.cri.poll_interval_seconds = 0.2
        cfg.cri.call_timeout_seconds = 30
        cfg.server.address = "127.0.0.1"
        cfg.server.client_ca_file = Path(self.testbed.client_ca_cert)
        cfg.pool.cron_prewarm = False
        for k, v in pool.items():
            setattr(cfg.pool, k, v)
        self.instances.add(name)
        return cfg

    async def start(self, cfg: WarmletConfig) -> WarmletNode:
        node = WarmletNode(cfg, serve_kubelet_api=True)
        self.nodes.append(node)
        await node.start(within=120)
        return node

    async def stop(self, node: WarmletNode) -> None:
        """Stop warmlet like a SIGTERM would: containers keep running."""
        await node.stop()
        if node in self.nodes:
            self.nodes.remove(node)

    # ------------------------------------------------------------------ API helpers
    async def namespace(self, prefix: str = "e2e") -> str:
        ns = await create_namespace(self.client, prefix)
        self.namespaces.append(ns)
        return ns

    async def pods(self, ns: str, selector: str | None = None) -> list[JSON]:
        params = {"labelSelector": selector} if selector else {}
        items: list[JSON] = (await self.client.list_all(f"/api/v1/namespaces/{ns}/pods", **params))["items"]
        return items

    async def pod(self, ns: str, name: str) -> JSON:
        return await self.client.get(f"/api/v1/namespaces/{ns}/pods/{name}")

    async def pod_log(self, ns: str, name: str, container: str = "main") -> tuple[int, str]:
        """GET pods/log through kube-apiserver (→ warmlet's kubelet API), as ``kubectl logs``."""
        url = f"{self.client.server}/api/v1/namespaces/{ns}/pods/{name}/log"
        async with self.client.session.get(
            url, params={"container": container}, headers={"Accept": "*/*"}
        ) as r:
            return r.status, await r.text()

    async def kubelet_get(self, node: str, path: str) -> tuple[int, str]:
        """GET on warmlet's kubelet API at the daemon endpoint its Node advertises, authenticated
        as kube-apiserver's kubelet client (the apiserver's node proxy refuses loopback)."""
        obj = await self.client.get(f"/api/v1/nodes/{node}")
        port = obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        pki = self.testbed.pki
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # warmlet's self-signed serving cert
        ctx.load_cert_chain(str(pki.apiserver_kubelet_client.cert), str(pki.apiserver_kubelet_client.key))
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"https://127.0.0.1:{port}/{path.lstrip('/')}", ssl=ctx) as r,
        ):
            return r.status, await r.text()

    async def ready_condition(self, node: str) -> JSON:
        obj = await self.client.get(f"/api/v1/nodes/{node}")
        for c in (obj.get("status") or {}).get("conditions") or []:
            if c.get("type") == "Ready":
                return dict(c)
        return {}

    # ------------------------------------------------------------------ runtime helpers
    async def containers(self, instance: str, **labels: str) -> list[Any]:
        """CRI containers (all states) owned by a warmlet instance."""
        c = CriClient(self.cri_endpoint)
        try:
            return list(await c.list_containers(labels={**m.managed_selector(instance), **labels}))
        finally:
            await c.close()

    async def sandbox_of(self, instance: str, pod_uid: str) -> str:
        """The sandbox the pod's containers run in (from the runtime, not from warmlet)."""
        conts = await self.containers(instance, **{m.LABEL_POD_UID: pod_uid})
        ids = {c.pod_sandbox_id for c in conts}
        assert len(ids) == 1, (pod_uid, ids)
        return ids.pop()

    async def cleanup(self) -> None:
        for node in list(self.nodes):
            with contextlib.suppress(Exception):
                await node.stop()
        self.nodes.clear()
        for ns in self.namespaces:
            with contextlib.suppress(ApiError):
                await self.client.delete(f"/api/v1/namespaces/{ns}")
        c = CriClient(self.cri_endpoint)
        try:
            for inst in self.instances:
                sel = m.managed_selector(inst)
                with contextlib.suppress(Exception):
                    for ct in await c.list_containers(labels=sel):
                        with contextlib.suppress(Exception):
                            await c.stop_container(ct.id, 0)
                            await c.remove_container(ct.id)
                    for sb in await c.list_pod_sandbox(labels=sel):
                        with contextlib.suppress(Exception):
                            await c.stop_pod_sandbox(sb.id)
                            await c.remove_pod_sandbox(sb.id)
                with contextlib.suppress(ApiError):
                    await self.client.delete(f"/api/v1/nodes/{inst}")
        finally:
            await c.close()


__all__ = ["E2E", "LEVEL", "job", "metric", "pod_spec", "start_count", "wait_for"]


@pytest.fixture
async def e2e(testbed: Any, kubeconfig: Path, cri_endpoint: str, tmp_path: Path) -> AsyncIterator[E2E]:
    """Per-test :class:`E2E` (imported by the e2e and faults conftests); cleans up after the test."""
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    env = E2E(client, kubeconfig, tmp_path, testbed, cri_endpoint)
    try:
        yield env
    finally:
        await env.cleanup()
        await client.close()
