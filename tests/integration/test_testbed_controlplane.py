"""Smoke tests: the test bed's control plane is real (apiserver, scheduler, controller-manager)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.rest import ApiException

from testbed import TestBed
from testbed.util import https_get


async def _eventually(what: str, probe: Any, within: float = 30.0) -> Any:
    """Await ``probe()`` until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        got = await probe()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.2)


async def _namespace(core: client.CoreV1Api, name: str) -> None:
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))

    async def sa_ready() -> bool:
        try:
            await core.read_namespaced_service_account("default", name)
            return True
        except ApiException:
            return False

    await _eventually("default ServiceAccount", sa_ready)


async def _drop_namespace(core: client.CoreV1Api, name: str) -> None:
    pods = await core.list_namespaced_pod(name)
    for p in pods.items:
        try:
            await core.delete_namespaced_pod(p.metadata.name, name, grace_period_seconds=0)
        except ApiException:
            pass
    await core.delete_namespace(name)


def test_apiserver_readyz(testbed: TestBed) -> None:
    pki = testbed.pki
    code, body = https_get(f"{testbed.apiserver_url}/readyz", testbed.ca_cert, pki.admin.cert, pki.admin.key)
    assert (code, body) == (200, b"ok")
    # the node identity authenticates via the client CA and is authorized by the Node authorizer
    out = testbed.kubectl(
        "auth", "can-i", "create", "nodes", f"--as=system:node:{testbed.node_name}", "--as-group=system:nodes"
    )
    assert out.strip() == "yes"


async def test_scheduler_binds_pod_to_registered_node(kube_api: client.ApiClient, unique: str) -> None:
    core = client.CoreV1Api(kube_api)
    node, ns = f"tb-smoke-{unique}", f"tb-sched-{unique}"
    await core.create_node(
        client.V1Node(
            metadata=client.V1ObjectMeta(name=node, labels={"warmlet.test/smoke": unique}),
            spec=client.V1NodeSpec(),
        )
    )
    try:
        res = {"cpu": "4", "memory": "8Gi", "pods": "110"}
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "smoke test"}
        body = {"status": {"conditions": [ready], "capacity": res, "allocatable": res}}
        await core.patch_node_status(node, body)
        await _namespace(core, ns)
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="p"),
            spec=client.V1PodSpec(
                node_selector={"warmlet.test/smoke": unique},
                containers=[client.V1Container(name="c", image="busybox")],
            ),
        )
        await core.create_namespaced_pod(ns, pod)

        async def bound() -> str | None:
            p = await core.read_namespaced_pod("p", ns)
            return p.spec.node_name  # type: ignore[no-any-return]

        assert await _eventually("pod bound by the scheduler", bound) == node

        async def scheduled_event() -> bool:  # recorded asynchronously after the binding
            events = await core.list_namespaced_event(ns, field_selector="reason=Scheduled")
            return any(e.involved_object.name == "p" for e in events.items)

        await _eventually("Scheduled event", scheduled_event)
    finally:
        await _drop_namespace(core, ns)
        await core.delete_node(node)


async def test_controller_manager_runs_deployment_to_pods(kube_api: client.ApiClient, unique: str) -> None:
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    ns = f"tb-deploy-{unique}"
    await _namespace(core, ns)
    try:
        labels = {"app": "tb"}
        dep = client.V1Deployment(
            metadata=client.V1ObjectMeta(name="d"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        node_selector={"warmlet.test/nowhere": "true"},  # stays Pending: no kubelet here
                        containers=[client.V1Container(name="c", image="busybox")],
                    ),
                ),
            ),
        )
        await apps.create_namespaced_deployment(ns, dep)

        async def replicaset() -> Any:
            rss = (await apps.list_namespaced_replica_set(ns)).items
            return [
                r for r in rss if r.metadata.owner_references and r.metadata.owner_references[0].name == "d"
            ]

        rs = (await _eventually("ReplicaSet of the Deployment", replicaset))[0]

        async def pods() -> Any:
            ps = (await core.list_namespaced_pod(ns)).items
            owned = [p for p in ps if p.metadata.owner_references[0].name == rs.metadata.name]
            return owned if len(owned) == 2 else None

        owned = await _eventually("2 pods of the ReplicaSet", pods)
        for p in owned:
            # ServiceAccount admission + token controller: the projected API-access volume exists
            assert p.spec.service_account_name == "default"
            assert any(v.name.startswith("kube-api-access-") for v in p.spec.volumes)
    finally:
        await _drop_namespace(core, ns)
