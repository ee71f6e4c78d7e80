"""Stats of real containers through warmlet's kubelet API (issue 5 on the CRI backend).

A busy container (a shell spinning on one core) and an idle one run through warmlet on
containerd; /stats/summary and /metrics/resource — fetched as kube-apiserver fetches them,
with its kubelet client certificate — must show plausible, non-zero CPU and memory for
the busy one, and parse as the formats metrics-server and Prometheus expect.
"""

from __future__ import annotations

import json
from typing import Any

from e2e_helpers import E2E, pod_spec, wait_for
from prometheus_client.parser import text_string_to_metric_families


def _samples(text: str) -> dict[tuple[str, str, str], float]:
    """(metric, pod, container) → value for the container-level series."""
    out: dict[tuple[str, str, str], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, s.labels.get("pod", ""), s.labels.get("container", ""))] = s.value
    return out


async def test_summary_and_resource_metrics_of_a_busy_container(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    for name, cmd in (("busy", "while :; do :; done"), ("idle", "sleep 3600")):
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": pod_spec(node, cmd, e2e.busybox, restart="Always", terminationGracePeriodSeconds=1),
        }
        await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", pod)

    async def both_running() -> bool:
        pods = await e2e.pods(ns)
        return len(pods) == 2 and all((p.get("status") or {}).get("phase") == "Running" for p in pods)

    await wait_for(both_running, 120, 0.5, "busy and idle pods Running")

    async def busy_cpu_seen() -> dict[str, Any] | None:
        status, body = await e2e.kubelet_get(node, "/stats/summary")
        assert status == 200, body
        summary = json.loads(body)
        pods = {p["podRef"]["name"]: p for p in summary["pods"] if p["podRef"]["namespace"] == ns}
        busy = pods.get("busy")
        if not busy or not busy["containers"]:
            return None
        cpu = busy["containers"][0].get("cpu") or {}
        return summary if cpu.get("usageNanoCores", 0) > 0 else None

    summary = await wait_for(busy_cpu_seen, 90, 1.0, "a CPU rate for the busy container")
    assert summary["node"]["nodeName"] == node
    assert summary["node"]["cpu"]["usageCoreNanoSeconds"] > 0
    assert summary["node"]["memory"]["workingSetBytes"] > 0
    pods = {p["podRef"]["name"]: p for p in summary["pods"] if p["podRef"]["namespace"] == ns}
    busy_c = pods["busy"]["containers"][0]
    idle_c = pods["idle"]["containers"][0]
    assert busy_c["name"] == "main" and busy_c["startTime"]
    # A spinning shell uses most of a core; allow a loaded 2-core machine its share.
    assert 50_000_000 < busy_c["cpu"]["usageNanoCores"] <= 2_100_000_000, busy_c["cpu"]
    assert busy_c["cpu"]["usageCoreNanoSeconds"] > idle_c["cpu"]["usageCoreNanoSeconds"]
    for c in (busy_c, idle_c):
        ws = c["memory"]["workingSetBytes"]
        assert 0 < ws < 512 * 1024**2, c["memory"]

    status, text = await e2e.kubelet_get(node, "/metrics/resource")
    assert status == 200, text
    samples = _samples(text)
    cpu_busy = samples[("container_cpu_usage_seconds_total", "busy", "main")]
    cpu_idle = samples[("container_cpu_usage_seconds_total", "idle", "main")]
    assert cpu_busy > cpu_idle >= 0
    assert samples[("container_memory_working_set_bytes", "busy", "main")] > 0
    assert samples[("container_start_time_seconds", "busy", "main")] > 1.7e9
    assert samples[("node_cpu_usage_seconds_total", "", "")] > 0
    assert samples[("resource_scrape_error", "", "")] == 0

    status, text = await e2e.kubelet_get(node, "/metrics")
    assert status == 200
    names = {f.name for f in text_string_to_metric_families(text)}
    assert "warmlet_pod_start_latency_seconds" in names
