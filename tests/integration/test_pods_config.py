"""Pods that must wait or fail: missing ConfigMap, hostPath, missing image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from provider.kubeclient import KubeClient
from testbed.testing import (
    bare_pod,
    create_namespace,
    events_for,
    node_config,
    phase,
    running_node,
    wait_for,
)

pytestmark = pytest.mark.integration


async def test_missing_configmap_hostpath_and_image(kubeconfig: Any, tmp_path: Path) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        async with running_node(cfg):
            ns = await create_namespace(client)
            node = cfg.node.name
            env = [
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "greeting"}}}
            ]
            await client.post(
                f"/api/v1/namespaces/{ns}/pods",
                bare_pod(
                    "cfg", node, containers=[{"name": "app", "image": "127.0.0.1:5000/sim/app:1", "env": env}]
                ),
            )
            await client.post(
                f"/api/v1/namespaces/{ns}/pods",
                bare_pod("host", node, volumes=[{"name": "h", "hostPath": {"path": "/var/run"}}]),
            )
            await client.post(
                f"/api/v1/namespaces/{ns}/pods",
                bare_pod(
                    "img", node, containers=[{"name": "app", "image": "127.0.0.1:5000/sim/does-not-exist:1"}]
                ),
            )

            async def get(name: str) -> dict[str, Any]:
                return await client.get(f"/api/v1/namespaces/{ns}/pods/{name}")

            async def waiting_reason(name: str, reasons: set[str]) -> dict[str, Any] | None:
                p = await get(name)
                for cs in (p.get("status") or {}).get("containerStatuses") or []:
                    w = cs["state"].get("waiting") or {}
                    if w.get("reason") in reasons:
                        return w
                return None

            w = await wait_for(
                lambda: waiting_reason("cfg", {"CreateContainerConfigError"}), 60, 0.5, "config error"
            )
            assert w["message"] == 'configmap "late" not found'
            assert (await get("cfg"))["status"]["phase"] == "Pending"
            await client.post(
                f"/api/v1/namespaces/{ns}/configmaps",
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "late"},
                    "data": {"greeting": "hi"},
                },
            )

            async def is_running(name: str) -> bool:
                return phase(await get(name)) == "Running"

            await wait_for(lambda: is_running("cfg"), 30, 0.5, "Running after the ConfigMap appeared")

            async def failed() -> dict[str, Any] | None:
                p = await get("host")
                return p if phase(p) == "Failed" else None

            p = await wait_for(failed, 30, 0.5, "hostPath pod Failed")
            assert p["status"]["reason"] == "UnsupportedOnVirtualNode"
            assert "hostPath volume 'h' (/var/run)" in p["status"]["message"]
            assert await events_for(client, ns, "UnsupportedOnVirtualNode")

            w = await wait_for(
                lambda: waiting_reason("img", {"ErrImagePull", "ImagePullBackOff"}), 30, 0.5, "pull"
            )
            assert "does-not-exist" in w["message"]
            await wait_for(lambda: waiting_reason("img", {"ImagePullBackOff"}), 30, 0.5, "ImagePullBackOff")
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()
