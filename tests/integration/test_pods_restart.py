"""warmlet dies mid-burst and comes back: every pod ends in the right state exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from provider.kubeclient import ApiError, KubeClient
from sandbox.simulated import SimulatedBackend
from testbed.testing import bare_pod, create_namespace, list_pods, node_config, phase, running_node, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def _create(client: KubeClient, ns: str, pods: list[dict[str, Any]]) -> None:
    sem = asyncio.Semaphore(16)

    async def one(p: dict[str, Any]) -> None:
        async with sem:
            await client.post(f"/api/v1/namespaces/{ns}/pods", p)

    await asyncio.gather(*(one(p) for p in pods))


async def test_crash_with_surviving_runtime_adopts_without_duplicates(
    kubeconfig: Any, tmp_path: Path
) -> None:
    """In-process: the runtime (backend) survives warmlet's death, as containerd does."""
    cfg = node_config(kubeconfig, tmp_path)
    backend = SimulatedBackend(tmp_path / "logs")
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    node = cfg.node.name
    try:
        async with running_node(cfg, backend=backend, delete_node=False) as first:
            ns = await create_namespace(client)
            await _create(client, ns, [bare_pod(f"p-{i}", node) for i in range(40)])
            jobs = [
                bare_pod(f"j-{i}", node, {"warmlet.io/sim-run-seconds": "0.5"}, restartPolicy="Never")
                for i in range(10)
            ]
            await _create(client, ns, jobs)

            async def some_running() -> bool:
                return sum(phase(p) == "Running" for p in await list_pods(client, ns)) >= 20

            await wait_for(some_running, 60, 0.2, "half the burst running")
            await first.crash()
            # while warmlet is down: graceful deletes (stay Terminating) and force deletes (vanish)
            for i in range(5):
                await client.delete(f"/api/v1/namespaces/{ns}/pods/p-{i}")
            for i in range(5, 8):
                await client.delete(f"/api/v1/namespaces/{ns}/pods/p-{i}", gracePeriodSeconds=0)
        async with running_node(cfg, backend=backend):

            async def converged() -> list[dict[str, Any]] | None:
                pods = await list_pods(client, ns)
                names = {p["metadata"]["name"] for p in pods}
                if any(f"p-{i}" in names for i in range(8)):
                    return None
                ok = all(
                    phase(p) == ("Succeeded" if p["metadata"]["name"].startswith("j-") else "Running")
                    for p in pods
                )
                return pods if ok and len(pods) == 42 else None

            pods = await wait_for(converged, 90, 0.5, "convergence after restart")
            live = {p["metadata"]["uid"] for p in pods if phase(p) == "Running"}
            sandboxes = await backend.list_sandboxes()
            assert sorted(s.pod_uid for s in sandboxes) == sorted(live)  # no orphan, no duplicate
            for p in pods:
                cs = await backend.pod_containers(p["metadata"]["uid"])
                if phase(p) == "Running":
                    assert [(c.name, c.attempt) for c in cs] == [("app", 0)], p["metadata"]["name"]
                    assert p["status"]["containerStatuses"][0]["restartCount"] == 0
            assert backend.sandboxes_created <= 50
            await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        await client.close()


async def test_sigkill_mid_burst_and_restart(kubeconfig: Any, tmp_path: Path) -> None:
    """Out of process: ``python -m provider.cli run`` is SIGKILLed mid-burst and restarted."""
    cfg = node_config(kubeconfig, tmp_path)
    node = cfg.node.name
    conf = tmp_path / "warmlet.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "kubeconfig": str(kubeconfig),
                "backend": "simulated",
                "log_dir": str(cfg.log_dir),
                "state_dir": str(cfg.state_dir),
                "node": {"name": node},
                "pods": {"volumes_dir": str(cfg.pods.volumes_dir)},
                "server": {
                    "port": 0,
                    "authorization_mode": "AlwaysAllow",
                    "cert_dir": str(cfg.server.cert_dir),
                },
            }
        )
    )
    log = open(tmp_path / "warmlet.log", "ab")  # noqa: SIM115, ASYNC230

    def spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "provider.cli", "run", "--config", str(conf)],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    proc = spawn()
    try:

        async def node_ready() -> bool:
            try:
                n = await client.get(f"/api/v1/nodes/{node}")
            except ApiError:
                return False
            return any(
                c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", [])
            )

        await wait_for(node_ready, 60, 0.3, "node registered by the subprocess")
        ns = await create_namespace(client)
        burst = asyncio.create_task(_create(client, ns, [bare_pod(f"p-{i}", node) for i in range(60)]))

        async def some_running() -> bool:
            return sum(phase(p) == "Running" for p in await list_pods(client, ns)) >= 15

        await wait_for(some_running, 60, 0.2, "part of the burst running")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        await burst
        for i in range(5):
            await client.delete(f"/api/v1/namespaces/{ns}/pods/p-{i}")
        proc = spawn()

        async def converged() -> list[dict[str, Any]] | None:
            pods = await list_pods(client, ns)
            if len(pods) != 55 or not all(phase(p) == "Running" for p in pods):
                return None
            if not all("warmlet.io/start-level" in (p["metadata"].get("annotations") or {}) for p in pods):
                return None
            return pods

        pods = await wait_for(converged, 120, 0.5, "55 Running pods after restart")
        for p in pods:
            cs = p["status"]["containerStatuses"]
            assert len(cs) == 1 and "running" in cs[0]["state"]
            assert p["metadata"]["annotations"]["warmlet.io/start-level"] in ("cold", "warm", "image_cached")
        # clean shutdown on SIGTERM
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        await client.delete(f"/api/v1/namespaces/{ns}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
        try:
            await client.delete(f"/api/v1/nodes/{node}")
        except ApiError:
            pass
        await client.close()
