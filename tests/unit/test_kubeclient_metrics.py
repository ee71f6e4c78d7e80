"""warmlet_api_requests_total: the API calls warmlet makes, by verb and resource (bounded labels)."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import REGISTRY

from provider.kubeclient import KubeClient, api_resource


def test_api_resource_names_the_resource_never_an_object() -> None:
    cases = {
        "/api/v1/namespaces/ns/pods/p/status": "pods/status",
        "/api/v1/namespaces/ns/pods/p": "pods",
        "/api/v1/namespaces/ns/pods": "pods",
        "/api/v1/pods?fieldSelector=spec.nodeName%3Dn": "pods",
        "/api/v1/namespaces/ns/serviceaccounts/default/token": "serviceaccounts/token",
        "/api/v1/namespaces/ns/events/p.17": "events",
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n": "leases",
        "/api/v1/nodes/n/status": "nodes/status",
        "/api/v1/namespaces/ns": "namespaces",
        "/api/v1/namespaces": "namespaces",
        "/apis/batch/v1/namespaces/ns/cronjobs/c": "cronjobs",
        "/metrics": "metrics",
        "/": "",
    }
    assert {p: api_resource(p) for p in cases} == cases


async def test_every_request_is_counted_by_verb_and_resource() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    server = TestServer(app)
    await server.start_server()
    client = KubeClient(str(server.make_url("")), False)

    def count(verb: str, resource: str) -> float:
        labels = {"verb": verb, "resource": resource}
        return REGISTRY.get_sample_value("warmlet_api_requests_total", labels) or 0.0

    try:
        before = count("PATCH", "pods/status"), count("POST", "serviceaccounts/token")
        await client.patch("/api/v1/namespaces/ns/pods/p/status", {"status": {}})
        await client.patch("/api/v1/namespaces/ns/pods/q/status", {"status": {}})
        await client.post("/api/v1/namespaces/ns/serviceaccounts/default/token", {})
        assert count("PATCH", "pods/status") - before[0] == 2
        assert count("POST", "serviceaccounts/token") - before[1] == 1
    finally:
        await client.close()
        await server.close()
