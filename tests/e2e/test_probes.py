"""Probes on the CRI backend, end to end: readiness keeps a pod out of its Service's endpoints,
liveness restarts with back-off and kubelet's events, httpGet/tcpSocket reach the pod IP through
the bed's CNI bridge, a startup probe gates readiness. Every test fails without probes (warmlet
used to report every running container ready and never restarted one)."""

from __future__ import annotations

from typing import Any

from e2e_helpers import E2E, pod_spec, wait_for
from prometheus_client.parser import text_string_to_metric_families

from testbed.testing import events_for

JSON = dict[str, Any]


def probed_pod(
    e2e: E2E, node: str, name: str, command: str, labels: dict[str, str] | None = None, **probes: Any
) -> JSON:
    spec = pod_spec(node, command, e2e.busybox, restart="Always", terminationGracePeriodSeconds=2)
    spec["containers"][0].update(probes)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def exec_probe(cmd: str, **kw: Any) -> JSON:
    return {"exec": {"command": ["sh", "-c", cmd]}, "periodSeconds": 1, **kw}


def container(p: JSON) -> JSON:
    return ((p.get("status") or {}).get("containerStatuses") or [{}])[0]


def cond(p: JSON, ctype: str) -> str:
    return next(
        (c["status"] for c in (p.get("status") or {}).get("conditions") or [] if c["type"] == ctype), ""
    )


async def test_readiness_endpoints_http_tcp_and_startup(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    labels = {"app": "web"}
    serve = (
        "mkdir -p /www; echo ok > /www/index.html; httpd -p 8080 -h /www; httpd -p 8081 -h /www; sleep 3600"
    )
    pods = [
        probed_pod(e2e, node, "never-ready", "sleep 3600", labels, readinessProbe=exec_probe("false")),
        probed_pod(e2e, node, "ready", "sleep 3600", labels, readinessProbe=exec_probe("true")),
        probed_pod(
            e2e,
            node,
            "http",
            serve,
            readinessProbe={"httpGet": {"port": "web", "path": "/index.html"}, "periodSeconds": 1},
            livenessProbe={"tcpSocket": {"port": 8081}, "periodSeconds": 1},
            ports=[{"name": "web", "containerPort": 8080}],
        ),
        probed_pod(
            e2e,
            node,
            "http-bad",
            serve,
            readinessProbe={"httpGet": {"port": 8080, "path": "/missing"}, "periodSeconds": 1},
        ),
    ]
    for p in pods:
        await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", p)
    await e2e.client.post(
        f"/api/v1/namespaces/{ns}/services",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    )

    async def settled() -> dict[str, JSON] | None:
        by = {p["metadata"]["name"]: p for p in await e2e.pods(ns)}
        ok = (
            len(by) == 4
            and all((p.get("status") or {}).get("phase") == "Running" for p in by.values())
            and container(by["ready"]).get("ready")
            and container(by["http"]).get("ready")
        )
        return by if ok else None

    by = await wait_for(settled, 180, 1.0, "all pods Running, the probed-good ones ready")
    # (a) readiness that never succeeds: unready, out of the Service's ready endpoints
    bad = by["never-ready"]
    assert container(bad)["ready"] is False and container(bad)["started"] is True
    assert cond(bad, "ContainersReady") == "False" and cond(bad, "Ready") == "False"
    assert cond(by["ready"], "Ready") == "True"
    ips = {n: p["status"]["podIP"] for n, p in by.items()}

    async def endpoints() -> dict[str, bool] | None:
        sel = "kubernetes.io/service-name=web"
        items = (
            await e2e.client.list_all(
                f"/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", labelSelector=sel
            )
        )["items"]
        out = {
            a: bool((ep.get("conditions") or {}).get("ready"))
            for s in items
            for ep in s.get("endpoints") or []
            for a in ep.get("addresses") or []
        }
        return out if out.get(ips["ready"]) else None

    eps = await wait_for(endpoints, 60, 1.0, "the ready pod in the Service's EndpointSlice")
    assert eps.get(ips["never-ready"]) is not True, eps
    unhealthy = [e["message"] for e in await events_for(e2e.client, ns, "Unhealthy")]
    assert any(m.startswith("Readiness probe failed") for m in unhealthy), unhealthy
    # (c) httpGet by port name against busybox httpd on the pod IP; tcpSocket liveness keeps it alive
    assert container(by["http"])["restartCount"] == 0
    assert container(by["http-bad"])["ready"] is False
    assert any("HTTP probe failed with statuscode: 404" in m for m in unhealthy), unhealthy


async def test_startup_probe_gates_readiness(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    pod = probed_pod(
        e2e,
        node,
        "slow-start",
        "sleep 8; touch /tmp/started; sleep 3600",
        startupProbe=exec_probe("test -f /tmp/started", failureThreshold=60),
        readinessProbe=exec_probe("true"),
    )
    await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", pod)

    async def running() -> JSON | None:
        p = await e2e.pod(ns, "slow-start")
        return p if "running" in (container(p).get("state") or {}) else None

    p = await wait_for(running, 120, 0.5, "the container running")
    assert container(p)["started"] is False and container(p)["ready"] is False
    assert cond(p, "Ready") == "False"

    async def started() -> JSON | None:
        p = await e2e.pod(ns, "slow-start")
        return p if container(p).get("started") else None

    p = await wait_for(started, 60, 0.5, "started once the startup probe passes")
    p = await wait_for(lambda: _ready(e2e, ns, "slow-start"), 30, 0.5, "ready after started")
    assert container(p)["restartCount"] == 0


async def _ready(e2e: E2E, ns: str, name: str) -> JSON | None:
    p = await e2e.pod(ns, name)
    return p if container(p).get("ready") and cond(p, "Ready") == "True" else None


async def test_liveness_failure_restarts_with_backoff_and_events(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    pod = probed_pod(
        e2e,
        node,
        "unhealthy",
        "sleep 3600",
        livenessProbe=exec_probe("echo sick; exit 1", failureThreshold=2),
    )
    await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", pod)

    async def restarted_twice() -> JSON | None:
        p = await e2e.pod(ns, "unhealthy")
        return p if container(p).get("restartCount", 0) >= 2 else None

    p = await wait_for(restarted_twice, 150, 1.0, "two liveness restarts")
    last = container(p)["lastState"]["terminated"]
    assert last["exitCode"] in (137, 143) and last["reason"] == "Error", last
    killing = [e["message"] for e in await events_for(e2e.client, ns, "Killing")]
    assert "Container main failed liveness probe, will be restarted" in killing, killing
    unhealthy = [e["message"] for e in await events_for(e2e.client, ns, "Unhealthy")]
    assert "Liveness probe failed: sick\n" in unhealthy, unhealthy
    backoff = [e for e in await events_for(e2e.client, ns, "BackOff")]
    assert backoff, "the second restart waits in CrashLoopBackOff"

    status, text = await e2e.kubelet_get(node, "/metrics/probes")
    assert status == 200
    failed = [
        smp.value
        for fam in text_string_to_metric_families(text)
        for smp in fam.samples
        if smp.name == "prober_probe_total"
        and smp.labels.get("pod") == "unhealthy"
        and smp.labels.get("namespace") == ns
        and smp.labels.get("probe_type") == "Liveness"
        and smp.labels.get("result") == "failed"
    ]
    assert failed and failed[0] >= 4, text[:2000]
