"""metrics-server scrapes a warmlet node with full TLS verification; `kubectl top` answers
through the API server's aggregation layer (issue 15).

warmlet (CRI backend, real containerd) gets its cluster-signed serving certificate (the test
approves the CSR), metrics-server (testbed/metrics_server.py, built by
scripts/build-metrics-server.sh) verifies it with ``--kubelet-certificate-authority`` and is
authorized by warmlet's Webhook authorization (SubjectAccessReview of ``nodes/metrics``); then
``kubectl top pod`` and ``kubectl top node`` list the pod and the node.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from csr_helpers import approve_next_csr
from e2e_helpers import E2E, pod_spec, wait_for

from testbed.metrics_server import BUILD, MetricsServer, binary


async def test_kubectl_top_through_metrics_server_with_verified_kubelet_tls(e2e: E2E) -> None:
    if not binary().exists():
        pytest.skip(f"metrics-server is not built ({binary()}): run {BUILD}")
    cfg = e2e.config()
    cfg.server.authorization_mode = "Webhook"  # metrics-server's identity is authorized like kubelet does
    node = cfg.node.name
    started = await e2e.start(cfg)
    await approve_next_csr(e2e.testbed, e2e.client, node, set())
    assert started.serving_cert is not None
    await asyncio.wait_for(started.serving_cert.issued.wait(), 60)

    ns = await e2e.namespace()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "busy"},
        "spec": pod_spec(
            node, "while :; do :; done", e2e.busybox, restart="Always", terminationGracePeriodSeconds=1
        ),
    }
    await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", pod)

    async def running() -> bool:
        return (await e2e.pod(ns, "busy")).get("status", {}).get("phase") == "Running"

    await wait_for(running, 120, 0.5, "busy pod Running")

    ms = MetricsServer(e2e.testbed)
    ms.start()
    try:

        async def available() -> bool:
            return await asyncio.to_thread(ms.available)

        await wait_for(available, 120, 1.0, f"APIService Available; metrics-server log:\n{ms.log_tail()}")

        async def top(*args: str) -> str | None:
            with contextlib.suppress(RuntimeError):
                return await asyncio.to_thread(e2e.testbed.kubectl, "top", *args)
            return None

        async def top_pod() -> str | None:
            out = await top("pod", "-n", ns, "--no-headers")
            return out if out and "busy" in out else None

        out = await wait_for(top_pod, 150, 2.0, "kubectl top pod lists the busy pod")
        cpu = out.split()[1]
        assert cpu.endswith("m") and int(cpu[:-1]) > 100, out  # a core spinning

        async def top_node() -> str | None:
            out = await top("node", node, "--no-headers")
            return out if out and out.split()[0] == node else None

        await wait_for(top_node, 90, 2.0, "kubectl top node lists the warmlet node")
        log = ms.log_tail(200)
        assert "x509" not in log and "insecure" not in log, log
    finally:
        ms.stop()
