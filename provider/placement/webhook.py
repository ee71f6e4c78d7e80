"""The placement mutating admission webhook: AdmissionReview v1 in, base64 JSONPatch out.

It must never block a pod: any internal error or a decision slower than its budget answers
``allowed: true`` without a patch, and the MutatingWebhookConfiguration says
``failurePolicy: Ignore`` so an unreachable webhook fails open too. The serving certificate
comes from warmlet's own small CA (``provider.kubelet_api.tls``) whose PEM is registered as the
configuration's ``caBundle``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import prometheus_client
from aiohttp import web
from cachetools import TTLCache

from provider.config import WebhookConfig
from provider.kubeclient import ApiError, KubeClient
from provider.kubelet_api.tls import ensure_serving_cert, server_ssl_context
from provider.placement.metrics import ADMISSION_SECONDS, ADMISSIONS, WEBHOOK_ERRORS
from provider.placement.policy import (
    ADMISSION_ANNOTATION,
    REPLICATED_KINDS,
    Decision,
    PlacementPolicy,
    Workload,
    counts_as_regular,
    decide,
    early_skip,
    pod_request,
)
from provider.placement.view import ClusterView
from provider.workload import controller_ref

log = logging.getLogger(__name__)
JSON = dict[str, Any]
WEBHOOK_NAME = "pods.placement.warmlet.io"
MWC_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


# ---------------------------------------------------------------------------- pure helpers


def selector_string(selector: Mapping[str, Any]) -> str:
    """A LabelSelector object as a labelSelector query string."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), ",".join(e.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def review_response(uid: str, decision: Decision | None) -> JSON:
    """The AdmissionReview answer: always allowed; a JSONPatch only when there is one."""
    response: JSON = {"uid": uid, "allowed": True}
    if decision is not None and decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(decision.patch).encode()).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def webhook_configuration(cfg: WebhookConfig, ca_pem: bytes, url: str | None) -> JSON:
    """The MutatingWebhookConfiguration registering this webhook (fails open)."""
    client_config: JSON = {"caBundle": base64.b64encode(ca_pem).decode()}
    if cfg.service:
        svc = cfg.service
        client_config["service"] = {
            "namespace": str(svc.get("namespace", "kube-system")),
            "name": str(svc.get("name", "warmlet-placement")),
            "port": int(svc.get("port", 443)),
            "path": "/mutate",
        }
    else:
        client_config["url"] = url
    ns_selector: JSON = {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": list(cfg.excluded_namespaces),
            }
        ]
    }
    if cfg.namespace_selector:
        ns_selector["matchLabels"] = dict(cfg.namespace_selector)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": cfg.configuration_name, "labels": {"app.kubernetes.io/managed-by": "warmlet"}},
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "timeoutSeconds": cfg.timeout_seconds,
                "reinvocationPolicy": "Never",
                "clientConfig": client_config,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": ns_selector,
                "objectSelector": {
                    "matchExpressions": [
                        {"key": "warmlet.io/placement", "operator": "NotIn", "values": ["off"]}
                    ]
                },
                "matchConditions": [
                    {
                        "name": "not-bound",
                        "expression": "!has(object.spec.nodeName) || object.spec.nodeName == ''",
                    },
                    {
                        "name": "not-daemonset",
                        "expression": "!has(object.metadata.ownerReferences) || "
                        "!object.metadata.ownerReferences.exists(r, r.kind == 'DaemonSet')",
                    },
                ],
            }
        ],
    }


class PeakTracker:
    """Observed peak replicas per workload over a window (in memory; restarts start afresh)."""

    def __init__(self, window_seconds: float, maxsize: int = 65536) -> None:
        self.window = window_seconds
        self._peaks: TTLCache[str, tuple[int, float]] = TTLCache(maxsize, ttl=window_seconds)

    def observe(self, key: str, replicas: int | None, now: float) -> int | None:
        old = self._peaks.get(key)
        if replicas is None:
            return old[0] if old else None
        if old is None or replicas >= old[0] or now - old[1] > self.window:
            self._peaks[key] = (replicas, now)
            return replicas
        return old[0]


# ---------------------------------------------------------------------------- lookups


@dataclass(frozen=True)
class Owner:
    workload: Workload | None
    selector: str = ""
    job_annotations: Mapping[str, str] | None = None


class OwnerResolver:
    """The pod's workload (annotations, replicas, selector), with short-lived caches."""

    def __init__(self, client: KubeClient, ttl: float = 10.0) -> None:
        self.client = client
        self._cache: TTLCache[str, JSON | None] = TTLCache(8192, ttl=ttl)

    async def _get(self, path: str) -> JSON | None:
        if path in self._cache:
            return self._cache[path]
        try:
            obj: JSON | None = await self.client.get(path)
        except ApiError as e:
            if not e.not_found:
                raise
            obj = None
        self._cache[path] = obj
        return obj

    async def resolve(self, ns: str, pod: Mapping[str, Any], want_job: bool) -> Owner:
        ref = controller_ref(pod.get("metadata") or {})
        if ref is None:
            return Owner(Workload("Pod", "", ""))
        kind, name = str(ref.get("kind")), str(ref.get("name"))
        if kind == "ReplicaSet":
            rs = await self._get(f"/apis/apps/v1/namespaces/{ns}/replicasets/{name}")
            if rs is None:
                return Owner(None)
            anns = dict(rs["metadata"].get("annotations") or {})
            replicas = (rs.get("spec") or {}).get("replicas")
            top = ""
            dref = controller_ref(rs["metadata"])
            if dref is not None and dref.get("kind") == "Deployment":
                dep = await self._get(f"/apis/apps/v1/namespaces/{ns}/deployments/{dref.get('name')}")
                if dep is not None:
                    anns.update(dep["metadata"].get("annotations") or {})
                    replicas = (dep.get("spec") or {}).get("replicas", replicas)
                    top = "Deployment"
            wl = Workload("ReplicaSet", name, rs["metadata"]["uid"], anns, replicas, top)
            return Owner(wl, selector_string((rs.get("spec") or {}).get("selector") or {}))
        if kind == "StatefulSet":
            sts = await self._get(f"/apis/apps/v1/namespaces/{ns}/statefulsets/{name}")
            if sts is None:
                return Owner(None)
            spec = sts.get("spec") or {}
            wl = Workload(
                "StatefulSet",
                name,
                sts["metadata"]["uid"],
                sts["metadata"].get("annotations") or {},
                spec.get("replicas"),
            )
            return Owner(wl, selector_string(spec.get("selector") or {}))
        if kind == "Job":
            job_anns: dict[str, str] = {}
            top = ""
            if want_job:
                job = await self._get(f"/apis/batch/v1/namespaces/{ns}/jobs/{name}")
                if job is not None:
                    job_anns.update(job["metadata"].get("annotations") or {})
                    cref = controller_ref(job["metadata"])
                    if cref is not None and cref.get("kind") == "CronJob":
                        top = "CronJob"
                        cj = await self._get(f"/apis/batch/v1/namespaces/{ns}/cronjobs/{cref.get('name')}")
                        if cj is not None:
                            job_anns = {**(cj["metadata"].get("annotations") or {}), **job_anns}
            return Owner(Workload("Job", name, str(ref.get("uid", "")), job_anns, None, top), "", job_anns)
        return Owner(Workload("Other", name, str(ref.get("uid", ""))))


class RegularCounter:
    """Live pods of a workload not on / steered to the virtual node: a cached list + reservations.

    The list (by the owner's selector, filtered on the controller uid) is refreshed at most every
    ``list_ttl`` seconds; pods admitted since then are covered by reservations, deduped against
    listed pods through the ``warmlet.io/admission-id`` annotation the webhook writes.
    """

    def __init__(self, client: KubeClient, list_ttl: float = 1.0, reservation_ttl: float = 60.0) -> None:
        self.client = client
        self._lists: TTLCache[str, list[JSON]] = TTLCache(4096, ttl=list_ttl)
        self._reserved: dict[str, TTLCache[str, bool]] = {}
        self._reservation_ttl = reservation_ttl
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, owner_uid: str) -> asyncio.Lock:
        if len(self._locks) > 4096:
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return self._locks.setdefault(owner_uid, asyncio.Lock())

    async def count(self, ns: str, wl: Workload, selector: str, virtual_nodes: set[str]) -> int:
        pods = self._lists.get(wl.uid)
        if pods is None:
            params = {"labelSelector": selector} if selector else {}
            items = (await self.client.list_all(f"/api/v1/namespaces/{ns}/pods", **params))["items"]
            pods = [p for p in items if (controller_ref(p["metadata"]) or {}).get("uid") == wl.uid]
            self._lists[wl.uid] = pods
        listed_ids = {(p["metadata"].get("annotations") or {}).get(ADMISSION_ANNOTATION) for p in pods}
        regular = sum(1 for p in pods if counts_as_regular(p, virtual_nodes))
        reserved = self._reserved.get(wl.uid)
        if reserved:
            regular += sum(1 for aid in list(reserved.keys()) if aid not in listed_ids)
        return regular

    def reserve(self, owner_uid: str, admission_id: str) -> None:
        r = self._reserved.get(owner_uid)
        if r is None:
            if len(self._reserved) > 4096:
                self._reserved = {k: v for k, v in self._reserved.items() if len(v)}
            r = self._reserved[owner_uid] = TTLCache(100_000, ttl=self._reservation_ttl)
        r[admission_id] = True


# ---------------------------------------------------------------------------- the webhook


class PlacementWebhook:
    """Decides one admission at a time (per workload), answering within a budget."""

    def __init__(
        self,
        client: KubeClient,
        view: ClusterView,
        policy: PlacementPolicy,
        budget_seconds: float = 1.0,
        peak_window_seconds: float = 7 * 24 * 3600.0,
    ) -> None:
        self.view = view
        self.policy = policy
        self.budget = budget_seconds
        self.owners = OwnerResolver(client)
        self.counter = RegularCounter(client)
        self.peaks = PeakTracker(peak_window_seconds)

    async def handle(self, review: Mapping[str, Any]) -> JSON:
        """AdmissionReview in → AdmissionReview out. Never raises for a parseable request."""
        req = review.get("request") or {}
        uid = str(req.get("uid", ""))
        t0 = time.monotonic()
        decision: Decision | None = None
        try:
            decision = await asyncio.wait_for(self.decide(req), self.budget)
            ADMISSIONS.labels(decision=decision.placement, reason=decision.reason).inc()
            if decision.placement != "skip":
                meta = (req.get("object") or {}).get("metadata") or {}
                log.info(
                    "placement decision ns=%s pod=%s decision=%s reason=%s threshold=%s",
                    req.get("namespace"),
                    meta.get("name") or meta.get("generateName"),
                    decision.placement,
                    decision.reason,
                    decision.threshold,
                )
        except TimeoutError:
            WEBHOOK_ERRORS.labels(kind="timeout").inc()
            ADMISSIONS.labels(decision="error", reason="timeout").inc()
            log.warning("placement decision timed out uid=%s budget=%s", uid, self.budget)
            decision = None
        except Exception as e:
            WEBHOOK_ERRORS.labels(kind="internal").inc()
            ADMISSIONS.labels(decision="error", reason="internal").inc()
            log.warning("placement decision failed uid=%s err=%r", uid, e)
            decision = None
        ADMISSION_SECONDS.observe(time.monotonic() - t0)
        return review_response(uid, decision)

    async def decide(self, req: Mapping[str, Any]) -> Decision:
        pod = req.get("object") or {}
        if (
            req.get("operation") != "CREATE"
            or (req.get("kind") or {}).get("kind") != "Pod"
            or req.get("subResource")
        ):
            return Decision("skip", "not-a-pod-create")
        early = early_skip(pod, self.policy)
        if early is not None:
            return early
        ns = str(req.get("namespace") or (pod.get("metadata") or {}).get("namespace") or "default")
        owner = await self.owners.resolve(ns, pod, want_job=self.policy.jobs == "annotation")
        wl = owner.workload
        nodes = self.view.views()
        admission_id = str(req.get("uid", ""))
        dry_run = bool(req.get("dryRun"))
        if wl is None or wl.kind not in REPLICATED_KINDS:
            d = decide(
                pod,
                wl,
                0,
                None,
                nodes,
                self.policy,
                admission_id,
                owner.job_annotations,
                self.view.pending_steered(),
            )
            if d.placement == "virtual" and not dry_run:
                self.view.steer(admission_id, pod_request(pod))
            return d
        peak = self.peaks.observe(wl.uid, wl.replicas, time.monotonic())
        async with self.counter.lock(wl.uid):
            regular = await self.counter.count(ns, wl, owner.selector, self.view.node_names())
            d = decide(
                pod,
                wl,
                regular,
                peak,
                nodes,
                self.policy,
                admission_id,
                owner.job_annotations,
                self.view.pending_steered(),
            )
            if not dry_run:
                if d.placement == "regular":
                    self.counter.reserve(wl.uid, admission_id)
                elif d.placement == "virtual":
                    self.view.steer(admission_id, pod_request(pod))
            return d


@dataclass
class WebhookServer:
    runner: web.AppRunner
    port: int
    url: str
    ca_pem: bytes

    async def close(self) -> None:
        await self.runner.cleanup()


def _app(hook: PlacementWebhook) -> web.Application:
    async def mutate(request: web.Request) -> web.Response:
        try:
            review = await request.json()
        except Exception:
            WEBHOOK_ERRORS.labels(kind="bad-request").inc()
            return web.json_response({"error": "expected an AdmissionReview"}, status=400)
        return web.json_response(await hook.handle(review))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics(_: web.Request) -> web.Response:
        body = prometheus_client.generate_latest()
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=8 * 1024**2)
    app.router.add_post("/mutate", mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_webhook_server(cfg: WebhookConfig, hook: PlacementWebhook) -> WebhookServer:
    """Serve /mutate over TLS (port 0: any free port); returns the URL the apiserver should call."""
    names: tuple[str, ...] = (cfg.address,)
    if cfg.service:
        svc, ns = (
            str(cfg.service.get("name", "warmlet-placement")),
            str(cfg.service.get("namespace", "kube-system")),
        )
        names += (svc, f"{svc}.{ns}", f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local")
    serving = await asyncio.to_thread(
        ensure_serving_cert,
        cfg.tls_cert_file,
        cfg.tls_key_file,
        Path(cfg.cert_dir),
        "warmlet-placement",
        names,
    )
    ca_path = serving.ca_file or cfg.ca_file
    ca_pem = await asyncio.to_thread(Path(ca_path).read_bytes) if ca_path is not None else b""
    runner = web.AppRunner(_app(hook), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(
        runner, cfg.address, cfg.port, ssl_context=server_ssl_context(serving, None), reuse_address=True
    )
    await site.start()
    port = cfg.port
    sockets = getattr(site._server, "sockets", None)
    if sockets:
        port = sockets[0].getsockname()[1]
    host = "127.0.0.1" if cfg.address in ("0.0.0.0", "::", "") else cfg.address
    url = cfg.url or f"https://{host}:{port}/mutate"
    log.info("placement webhook listening address=%s port=%d url=%s", cfg.address, port, url)
    return WebhookServer(runner, port, url, ca_pem)


async def register(client: KubeClient, body: JSON) -> None:
    """Create or update the MutatingWebhookConfiguration (only when it differs)."""
    name = body["metadata"]["name"]
    try:
        existing = await client.get(f"{MWC_PATH}/{name}")
    except ApiError as e:
        if not e.not_found:
            raise
        await client.post(MWC_PATH, body)
        log.info("placement webhook registered configuration=%s", name)
        return
    if _same_webhooks(existing.get("webhooks") or [], body["webhooks"]):
        return
    body = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": existing["metadata"]["resourceVersion"]},
    }
    await client.put(f"{MWC_PATH}/{name}", body)
    log.info("placement webhook configuration updated configuration=%s", name)


def _same_webhooks(have: list[JSON], want: list[JSON]) -> bool:
    """Equal in every field we set (the apiserver adds defaults such as matchPolicy)."""
    return len(have) == len(want) and all(
        all(h.get(k) == v for k, v in w.items()) for h, w in zip(have, want, strict=True)
    )


async def unregister(client: KubeClient, name: str) -> None:
    try:
        await client.delete(f"{MWC_PATH}/{name}")
    except ApiError as e:
        if not e.not_found:
            raise
