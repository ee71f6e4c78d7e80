"""The webhook's AdmissionReview handling (fail-open, counting, owners), its configuration, the
TLS server round trip, and the binder's request bodies — without an apiserver."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from provider.config import WebhookConfig
from provider.kubeclient import ApiError
from provider.placement.binder import binding_body, unschedulable_patch
from provider.placement.policy import (
    ADMISSION_ANNOTATION,
    DECISION_ANNOTATION,
    THRESHOLD_ANNOTATION,
    NodeView,
    PlacementPolicy,
    Resources,
)
from provider.placement.webhook import (
    PeakTracker,
    PlacementWebhook,
    RegularCounter,
    review_response,
    selector_string,
    start_webhook_server,
    webhook_configuration,
)

pytestmark = pytest.mark.unit
JSON = dict[str, Any]
NS = "team"


class FakeClient:
    """get/list_all over a dict of paths; counts calls."""

    def __init__(self, objects: dict[str, JSON], pods: list[JSON] | None = None) -> None:
        self.objects = objects
        self.pods = pods or []
        self.lists = 0

    async def get(self, path: str, **_: Any) -> JSON:
        if path not in self.objects:
            raise ApiError(404, "NotFound", path)
        return self.objects[path]

    async def list_all(self, path: str, **_: Any) -> JSON:
        self.lists += 1
        return {"items": list(self.pods), "metadata": {}}


class FakeView:
    def __init__(self, nodes: list[NodeView]) -> None:
        self.nodes = nodes
        self.steered: dict[str, Resources] = {}

    def views(self) -> list[NodeView]:
        return self.nodes

    def node_names(self) -> set[str]:
        return {n.name for n in self.nodes}

    def pending_steered(self) -> Resources:
        total = Resources()
        for r in self.steered.values():
            total = total + r
        return total

    def steer(self, aid: str, req: Resources) -> None:
        self.steered[aid] = req


def vnode() -> NodeView:
    return NodeView(
        "v1", {"type": "virtual-kubelet"}, True, False, 1.0, Resources(100, 10_000, 1 << 34), Resources()
    )


def objects(threshold: str = "2") -> dict[str, JSON]:
    return {
        f"/apis/apps/v1/namespaces/{NS}/replicasets/web-1": {
            "metadata": {
                "name": "web-1",
                "uid": "rs-uid",
                "ownerReferences": [
                    {"kind": "Deployment", "name": "web", "uid": "d-uid", "controller": True}
                ],
            },
            "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "web"}}},
        },
        f"/apis/apps/v1/namespaces/{NS}/deployments/web": {
            "metadata": {"name": "web", "uid": "d-uid", "annotations": {THRESHOLD_ANNOTATION: threshold}},
            "spec": {"replicas": 5},
        },
    }


def review(uid: str, owner: str = "web-1", kind: str = "ReplicaSet") -> JSON:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": NS,
            "object": {
                "metadata": {
                    "generateName": "web-1-",
                    "labels": {"app": "web"},
                    "ownerReferences": [{"kind": kind, "name": owner, "uid": "rs-uid", "controller": True}],
                },
                "spec": {"containers": [{"name": "c", "image": "x"}]},
            },
        },
    }


def patch_of(resp: JSON) -> list[JSON]:
    r = resp["response"]
    assert r["allowed"] is True
    return json.loads(base64.b64decode(r["patch"])) if "patch" in r else []


def hook(client: FakeClient, nodes: list[NodeView] | None = None, budget: float = 1.0) -> PlacementWebhook:
    h = PlacementWebhook(client, FakeView(nodes or [vnode()]), PlacementPolicy(), budget)  # type: ignore[arg-type]
    return h


async def test_concurrent_admissions_respect_the_threshold() -> None:
    """A ReplicaSet's burst of admissions: reservations count pods not listed yet."""
    client = FakeClient(objects("2"))
    h = hook(client)
    responses = await asyncio.gather(*(h.handle(review(f"u{i}")) for i in range(6)))
    decisions = []
    for r in responses:
        ops = patch_of(r)
        anns = next(o["value"] for o in ops if o["path"] == "/metadata/annotations")
        decisions.append(anns[DECISION_ANNOTATION])
    assert sorted(decisions) == ["regular"] * 2 + ["virtual"] * 4
    assert client.lists == 1  # one list per second per workload


async def test_listed_pods_dedupe_reservations() -> None:
    listed = [
        {
            "metadata": {
                "ownerReferences": [{"uid": "rs-uid", "controller": True}],
                "annotations": {ADMISSION_ANNOTATION: "u0", DECISION_ANNOTATION: "regular"},
            },
            "spec": {"nodeName": "r1"},
            "status": {"phase": "Running"},
        },
        {  # another controller's pod with the same labels: not counted
            "metadata": {"ownerReferences": [{"uid": "other", "controller": True}]},
            "spec": {},
            "status": {},
        },
    ]
    c = RegularCounter(FakeClient({}, listed), list_ttl=60)  # type: ignore[arg-type]
    from provider.placement.policy import Workload

    wl = Workload("ReplicaSet", "web-1", "rs-uid")
    c.reserve("rs-uid", "u0")  # the listed pod itself
    c.reserve("rs-uid", "u1")  # admitted, not listed yet
    assert await c.count(NS, wl, "app=web", {"v1"}) == 2


async def test_internal_error_and_timeout_fail_open() -> None:
    h = hook(FakeClient(objects()))

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("boom")

    h.owners.resolve = broken  # type: ignore[method-assign]
    resp = await h.handle(review("u1"))
    assert resp["response"] == {"uid": "u1", "allowed": True}

    slow = hook(FakeClient(objects()), budget=0.05)

    async def stuck(*_: Any, **__: Any) -> Any:
        await asyncio.Event().wait()  # never answers: the budget (wall time, 50 ms) cuts it off

    slow.owners.resolve = stuck  # type: ignore[method-assign]
    resp = await slow.handle(review("u2"))
    assert resp["response"] == {"uid": "u2", "allowed": True}


async def test_missing_owner_and_non_pod_requests_are_left_alone() -> None:
    h = hook(FakeClient({}))
    assert "patch" not in (await h.handle(review("u1", owner="gone")))["response"]
    r = review("u2")
    r["request"]["operation"] = "UPDATE"
    assert "patch" not in (await h.handle(r))["response"]
    assert (await h.handle({}))["response"] == {"uid": "", "allowed": True}


async def test_dry_run_reserves_nothing() -> None:
    h = hook(FakeClient(objects("1")))
    r = review("dry")
    r["request"]["dryRun"] = True
    for _ in range(3):
        anns = patch_of(await h.handle(r))[0]["value"]
        assert anns[DECISION_ANNOTATION] == "regular"


def test_review_response_encodes_json_patch() -> None:
    from provider.placement.policy import Decision

    ops = [{"op": "add", "path": "/metadata/annotations", "value": {"a": "b"}}]
    resp = review_response("x", Decision("virtual", "r", ops))
    assert resp["response"]["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(resp["response"]["patch"])) == ops
    assert review_response("x", Decision("skip", "r"))["response"] == {"uid": "x", "allowed": True}
    assert review_response("x", None)["response"] == {"uid": "x", "allowed": True}


def test_webhook_configuration_fails_open_and_excludes_system_namespaces() -> None:
    cfg = WebhookConfig(enabled=True, namespace_selector={"team": "a"})
    body = webhook_configuration(cfg, b"PEM", "https://127.0.0.1:8443/mutate")
    w = body["webhooks"][0]
    assert w["failurePolicy"] == "Ignore" and w["sideEffects"] == "None"
    assert w["timeoutSeconds"] == 2 and w["admissionReviewVersions"] == ["v1"]
    assert w["clientConfig"] == {
        "caBundle": base64.b64encode(b"PEM").decode(),
        "url": "https://127.0.0.1:8443/mutate",
    }
    expr = w["namespaceSelector"]["matchExpressions"][0]
    assert expr["operator"] == "NotIn" and "kube-system" in expr["values"]
    assert w["namespaceSelector"]["matchLabels"] == {"team": "a"}
    assert w["rules"][0]["operations"] == ["CREATE"] and w["rules"][0]["resources"] == ["pods"]
    svc = WebhookConfig(service={"namespace": "kube-system", "name": "warmlet-placement", "port": 443})
    cc = webhook_configuration(svc, b"PEM", None)["webhooks"][0]["clientConfig"]
    assert cc["service"] == {
        "namespace": "kube-system",
        "name": "warmlet-placement",
        "port": 443,
        "path": "/mutate",
    }
    assert "url" not in cc


def test_selector_string() -> None:
    sel = {
        "matchLabels": {"b": "2", "a": "1"},
        "matchExpressions": [
            {"key": "t", "operator": "In", "values": ["x", "y"]},
            {"key": "u", "operator": "NotIn", "values": ["z"]},
            {"key": "e", "operator": "Exists"},
            {"key": "d", "operator": "DoesNotExist"},
        ],
    }
    assert selector_string(sel) == "a=1,b=2,t in (x,y),u notin (z),e,!d"


def test_peak_tracker() -> None:
    t = PeakTracker(window_seconds=100)
    assert t.observe("w", None, 0) is None
    assert t.observe("w", 5, 0) == 5
    assert t.observe("w", 3, 10) == 5
    assert t.observe("w", 8, 20) == 8
    assert t.observe("w", None, 30) == 8
    assert t.observe("w", 2, 200) == 2  # the old peak left the window


def test_binder_bodies() -> None:
    pod = {"metadata": {"name": "p", "namespace": "n", "uid": "u"}}
    b = binding_body(pod, "node-1")
    assert b["kind"] == "Binding" and b["metadata"]["uid"] == "u" and b["target"]["name"] == "node-1"
    cond = unschedulable_patch("0/1 nodes are available", 0)["status"]["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"]) == ("PodScheduled", "False", "Unschedulable")


async def test_tls_server_round_trip(tmp_path: Path) -> None:
    """The server answers an AdmissionReview over TLS verified with the CA it registers."""
    cfg = WebhookConfig(enabled=True, port=0, cert_dir=tmp_path / "pki")
    server = await start_webhook_server(cfg, hook(FakeClient(objects("0"))))
    try:
        assert server.url == f"https://127.0.0.1:{server.port}/mutate"
        ctx = ssl.create_default_context(cadata=server.ca_pem.decode())
        async with aiohttp.ClientSession() as s:
            async with s.post(server.url, json=review("tls"), ssl=ctx) as resp:
                body = await resp.json()
            async with s.post(server.url, data=b"not json", ssl=ctx) as resp:
                assert resp.status == 400
        assert body["response"]["uid"] == "tls" and body["response"]["patchType"] == "JSONPatch"
    finally:
        await server.close()


def test_binder_queues_only_unbound_ungated_live_pods() -> None:
    from provider.config import BinderConfig
    from provider.placement.binder import FastBinder

    b = FastBinder(FakeClient({}), FakeView([vnode()]), BinderConfig(enabled=True))  # type: ignore[arg-type]

    def p(uid: str, **spec: Any) -> JSON:
        return {"metadata": {"uid": uid, "name": uid, "namespace": NS}, "spec": spec}

    b._event("ADDED", p("a"))
    b._event("ADDED", p("gated", schedulingGates=[{"name": "hold"}]))
    b._event("ADDED", p("bound", nodeName="n1"))
    b._event("ADDED", {**p("gone"), "metadata": {"uid": "gone", "deletionTimestamp": "x"}})
    assert set(b.pending) == {"a"}
    b._event("MODIFIED", p("a", nodeName="v1"))  # bound elsewhere: forgotten
    assert not b.pending
