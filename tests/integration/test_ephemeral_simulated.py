"""``kubectl debug`` on a simulated node: the backend runs no processes, so the ephemeral container
cannot run; the pod gets a Warning event and an ephemeral container status saying why (it used to
be accepted by the API server and then nothing at all), and the pod itself stays Running and Ready."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from provider.ephemeral import NOT_SUPPORTED
from provider.kubeclient import KubeClient
from testbed.testing import bare_pod, create_namespace, events_for, node_config, phase, running_node, wait_for

pytestmark = pytest.mark.integration


async def test_kubectl_debug_on_simulated_node_says_why(
    kubeconfig: Any, testbed: Any, tmp_path: Path
) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    try:
        async with running_node(cfg):
            ns = await create_namespace(client)
            await client.post(f"/api/v1/namespaces/{ns}/pods", bare_pod("x", cfg.node.name))

            async def get() -> dict[str, Any]:
                return await client.get(f"/api/v1/namespaces/{ns}/pods/x")

            async def is_running() -> bool:
                return phase(await get()) == "Running"

            await wait_for(is_running, 60, 0.5, "pod Running")
            before = (await get())["status"]["containerStatuses"]
            await asyncio.to_thread(
                testbed.kubectl, "-n", ns, "debug", "pod/x", "--image=busybox:1.36", "-c", "dbg", "--", "ps"
            )

            async def waiting() -> dict[str, Any] | None:
                for s in (await get()).get("status", {}).get("ephemeralContainerStatuses") or []:
                    w = s["state"].get("waiting") or {}
                    if s["name"] == "dbg" and w.get("reason") == NOT_SUPPORTED:
                        return dict(w)
                return None

            w = await wait_for(waiting, 60, 0.5, "ephemeral status saying why")
            assert "runs no processes" in w["message"] and "simulated" in w["message"], w

            async def warned() -> list[dict[str, Any]]:
                return [
                    e
                    for e in await events_for(client, ns, "Failed")
                    if e["type"] == "Warning" and "runs no processes" in e["message"]
                ]

            events = await wait_for(warned, 30, 0.5, "Warning event")
            assert 'ephemeral container "dbg"' in events[0]["message"]
            pod = await get()
            assert phase(pod) == "Running"
            assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
            assert pod["status"]["containerStatuses"] == before  # nothing restarted
    finally:
        await client.close()
