"""A burst of pods: all reach Running while the node stays Ready and its lease keeps renewing."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from provider.kubeclient import KubeClient
from testbed.testing import bare_pod, create_namespace, list_pods, node_config, phase, running_node, wait_for

pytestmark = pytest.mark.integration

N = 200


async def test_burst_of_200_pods_node_stays_ready(kubeconfig: Any, tmp_path: Path) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.node.lease_renew_interval_seconds = 2.0
    client = await KubeClient.from_kubeconfig(str(kubeconfig), max_connections=32)
    name = cfg.node.name
    try:
        async with running_node(cfg):
            ns = await create_namespace(client)
            renewals: list[float] = []
            not_ready: list[str] = []
            stop = asyncio.Event()

            async def monitor() -> None:
                lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
                last = ""
                while not stop.is_set():
                    lease = await client.get(lease_path)
                    if lease["spec"]["renewTime"] != last:
                        last = lease["spec"]["renewTime"]
                        renewals.append(time.monotonic())
                    node = await client.get(f"/api/v1/nodes/{name}")
                    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
                    if ready["status"] != "True":
                        not_ready.append(ready.get("reason", ""))
                    await asyncio.sleep(0.5)

            mon = asyncio.create_task(monitor())
            sem = asyncio.Semaphore(20)

            async def create(i: int) -> None:
                async with sem:
                    await client.post(f"/api/v1/namespaces/{ns}/pods", bare_pod(f"burst-{i}", name))

            t0 = time.monotonic()
            await asyncio.gather(*(create(i) for i in range(N)))

            async def all_running() -> bool:
                pods = await list_pods(client, ns)
                return len(pods) == N and all(phase(p) == "Running" for p in pods)

            await wait_for(all_running, 180, 1.0, f"{N} pods Running")
            elapsed = time.monotonic() - t0
            # A fast burst can end within one renewal interval: observe at least three intervals.
            await asyncio.sleep(max(0.0, 3 * cfg.node.lease_renew_interval_seconds - elapsed))
            stop.set()
            await mon
            assert not_ready == [], f"node went NotReady during the burst: {not_ready}"
            gaps = [b - a for a, b in itertools.pairwise(renewals)]
            assert len(renewals) >= 2
            assert max(gaps, default=0) < 10, f"lease renewal gap {max(gaps):.1f}s (elapsed {elapsed:.1f}s)"
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()
