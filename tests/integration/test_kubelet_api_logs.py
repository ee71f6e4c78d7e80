"""The kubelet API behind a real kube-apiserver: pods/log as kubectl logs uses it, node proxy, authn/authz.

The test registers a Node whose daemon endpoint is our server, binds a pod to it with
spec.nodeName and drives the SimulatedBackend directly, so only the API is under test.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from common.crilog import CRILogWriter
from provider.config import ServerConfig
from provider.kubeclient import ApiError, KubeClient
from provider.kubelet_api import KubeletApiServer, StaticPods, start_kubelet_api
from sandbox.backend import ContainerSpec, PodSandboxSpec, PullPolicy
from sandbox.simulated import SimulatedBackend

pytestmark = pytest.mark.integration


def _find(root: Path, name: str) -> Path | None:
    for parent in [root, *root.parents][:4]:
        hits = sorted(parent.rglob(name)) if parent != Path("/") else []
        if hits:
            return hits[0]
    return None


def _pki_paths(request: pytest.FixtureRequest, kubeconfig: Path) -> tuple[Path, Path, Path]:
    """(client CA, apiserver kubelet-client cert, key) from the testbed fixture or its PKI dir."""
    try:
        bed = request.getfixturevalue("testbed")
        pki = getattr(bed, "pki", None) or getattr(getattr(bed, "controlplane", None), "pki", None)
        if pki is not None:
            return pki.client_ca.cert, pki.apiserver_kubelet_client.cert, pki.apiserver_kubelet_client.key
    except pytest.FixtureLookupError:
        pass
    ca = _find(Path(kubeconfig).parent, "client-ca.crt")
    crt = _find(Path(kubeconfig).parent, "client-kube-apiserver-kubelet-client*.crt")
    if ca is None or crt is None:
        pytest.skip("cannot locate the test bed PKI")
    return ca, crt, crt.with_suffix(".key")


class Bed:
    def __init__(
        self,
        kube: KubeClient,
        api: KubeletApiServer,
        backend: SimulatedBackend,
        pods: StaticPods,
        node: str,
        kubelet_client: tuple[Path, Path],
    ) -> None:
        self.kube, self.api, self.backend, self.pods, self.node = kube, api, backend, pods, node
        self.kubelet_client = kubelet_client
        self.ns = "default"

    async def create_pod(self, name: str, containers: tuple[str, ...] = ("main",)) -> dict[str, Any]:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "nodeName": self.node,
                "automountServiceAccountToken": False,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{"name": c, "image": "busybox:1.36"} for c in containers],
            },
        }
        pod = await self.kube.post(f"/api/v1/namespaces/{self.ns}/pods", body)
        self.pods.put(pod)
        return pod

    async def run(
        self,
        pod: dict[str, Any],
        container: str = "main",
        attempt: int = 0,
        ann: dict[str, str] | None = None,
    ) -> str:
        meta = pod["metadata"]
        spec = PodSandboxSpec(
            uid=meta["uid"],
            namespace=meta["namespace"],
            name=meta["name"],
            workload_key="k",
            hostname=meta["name"],
            annotations=ann or {},
        )
        sb = await self.backend.acquire_sandbox(spec)
        await self.backend.ensure_image("busybox:1.36", PullPolicy.IF_NOT_PRESENT)
        cid = await self.backend.create_container(
            sb, spec, ContainerSpec(name=container, image="busybox:1.36"), attempt
        )
        await self.backend.start_container(cid)
        return cid

    def writer(self, pod: dict[str, Any], container: str = "main", attempt: int = 0) -> CRILogWriter:
        m = pod["metadata"]
        return CRILogWriter(self.backend.log_path(m["namespace"], m["name"], m["uid"], container, attempt))

    async def logs(self, pod: str, **params: str) -> tuple[int, str]:
        """GET pods/log through the API server, as kubectl logs does."""
        url = f"{self.kube.server}/api/v1/namespaces/{self.ns}/pods/{pod}/log"
        async with self.kube.session.get(url, params=params, headers={"Accept": "*/*"}) as r:
            return r.status, await r.text()

    def direct_ssl(self, client_cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        assert self.api.serving.ca_file is not None
        ctx = ssl.create_default_context(cafile=str(self.api.serving.ca_file))
        if client_cert is not None:
            ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        return ctx

    async def direct(
        self, path: str, headers: dict[str, str] | None = None, client_cert: tuple[Path, Path] | None = None
    ) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{self.api.url}{path}", headers=headers or {}, ssl=self.direct_ssl(client_cert)) as r,
        ):
            return r.status, await r.text()


@pytest.fixture
async def bed(request: pytest.FixtureRequest, kubeconfig: Any, tmp_path: Path) -> AsyncIterator[Bed]:
    client_ca, kc_cert, kc_key = _pki_paths(request, Path(kubeconfig))
    kube = await KubeClient.from_kubeconfig(str(kubeconfig))
    backend = SimulatedBackend(tmp_path / "logs")
    await backend.start()
    pods = StaticPods()
    node = f"wl-api-{uuid.uuid4().hex[:8]}"
    cfg = ServerConfig(
        address="127.0.0.1",
        port=0,
        cert_dir=tmp_path / "pki",
        client_ca_file=client_ca,
        auth_cache_ttl_seconds=1.0,
    )
    api = await start_kubelet_api(cfg, node, backend, pods, kube)
    await kube.post(
        "/api/v1/nodes",
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node, "labels": {"type": "virtual-kubelet"}},
            "spec": {
                "taints": [{"key": "virtual-kubelet.io/provider", "value": "warmlet", "effect": "NoSchedule"}]
            },
        },
    )
    status = {
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": node},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": api.port}},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "test",
                    "lastHeartbeatTime": None,
                    "lastTransitionTime": None,
                }
            ],
        }
    }
    await kube.patch(f"/api/v1/nodes/{node}/status", status, content_type="application/merge-patch+json")
    b = Bed(kube, api, backend, pods, node, (kc_cert, kc_key))
    try:
        yield b
    finally:
        for p in pods.list_pods():
            try:
                await kube.delete(
                    f"/api/v1/namespaces/{b.ns}/pods/{p['metadata']['name']}", gracePeriodSeconds=0
                )
            except ApiError:
                pass
        try:
            await kube.delete(f"/api/v1/nodes/{node}")
        except ApiError:
            pass
        await api.close()
        await backend.close()
        await kube.close()


async def test_pods_log_through_apiserver(bed: Bed) -> None:
    name = f"logs-{uuid.uuid4().hex[:6]}"
    pod = await bed.create_pod(name)
    await bed.run(pod, ann={"warmlet.io/sim-log": "alpha\nbeta\ngamma"})
    expected = "simulated container main started\nalpha\nbeta\ngamma\n"
    assert await bed.logs(name) == (200, expected)
    assert await bed.logs(name, container="main") == (200, expected)
    assert await bed.logs(name, tailLines="1") == (200, "gamma\n")
    assert await bed.logs(name, sinceSeconds="3600") == (200, expected)
    assert await bed.logs(name, limitBytes="10") == (200, expected[:10])
    status, text = await bed.logs(name, timestamps="true")
    assert status == 200
    first = text.splitlines()[0]
    assert first.endswith(" simulated container main started") and first[:4].isdigit() and "T" in first[:20]
    status, text = await bed.logs(name, previous="true")
    assert status == 400 and f'previous terminated container \\"main\\" in pod \\"{name}\\" not found' in text


async def test_previous_after_restart(bed: Bed) -> None:
    name = f"restart-{uuid.uuid4().hex[:6]}"
    pod = await bed.create_pod(name)
    ann = {"warmlet.io/sim-run-seconds": "0", "warmlet.io/sim-exit-code": "2", "warmlet.io/sim-log": "crash"}
    await bed.run(pod, attempt=0, ann=ann)
    await asyncio.sleep(0.05)
    bed.writer(pod, attempt=0).write("first attempt\n")
    await bed.run(pod, attempt=1, ann={"warmlet.io/sim-log": "second attempt"})
    status, prev = await bed.logs(name, previous="true")
    assert status == 200 and prev.endswith("crash\nfirst attempt\n")
    status, cur = await bed.logs(name)
    assert status == 200 and cur.endswith("second attempt\n") and "first attempt" not in cur


async def test_follow_delivers_new_lines(bed: Bed) -> None:
    name = f"follow-{uuid.uuid4().hex[:6]}"
    pod = await bed.create_pod(name)
    cid = await bed.run(pod)
    w = bed.writer(pod)
    url = f"{bed.kube.server}/api/v1/namespaces/{bed.ns}/pods/{name}/log"
    timeout = aiohttp.ClientTimeout(total=30)
    async with bed.kube.session.get(url, params={"follow": "true"}, timeout=timeout) as r:
        assert r.status == 200
        assert await asyncio.wait_for(r.content.readline(), 10) == b"simulated container main started\n"
        for i in range(3):
            w.write(f"live {i}\n")
            assert await asyncio.wait_for(r.content.readline(), 10) == f"live {i}\n".encode()
        await bed.backend.stop_container(cid, 0)
        assert await asyncio.wait_for(r.content.read(), 10) == b""


async def test_stats_and_metrics_with_the_apiserver_identity(bed: Bed) -> None:
    # The API server refuses nodes/proxy to loopback addresses, so scrape directly with the
    # API server's kubelet client certificate (what metrics-server's identity amounts to).
    pod = await bed.create_pod(f"stats-{uuid.uuid4().hex[:6]}")
    await bed.run(pod)
    status, body = await bed.direct("/stats/summary", client_cert=bed.kubelet_client)
    summary = json.loads(body)
    assert status == 200 and summary["node"]["nodeName"] == bed.node
    assert [p["podRef"]["name"] for p in summary["pods"]] == [pod["metadata"]["name"]]
    status, text = await bed.direct("/metrics/resource", client_cert=bed.kubelet_client)
    assert status == 200 and 'container_cpu_usage_seconds_total{container="main"' in text


async def test_authn_authz(bed: Bed) -> None:
    # No credentials: 401, like kubelet.
    assert await bed.direct("/pods") == (401, "Unauthorized")
    # The API server's kubelet client certificate (system:masters) passes.
    status, _ = await bed.direct("/stats/summary", client_cert=bed.kubelet_client)
    assert status == 200
    # A service account without RBAC on nodes: authenticated by TokenReview, denied by SAR.
    sa = f"nolog-{uuid.uuid4().hex[:6]}"
    await bed.kube.post(f"/api/v1/namespaces/{bed.ns}/serviceaccounts", {"metadata": {"name": sa}})
    tr = await bed.kube.post(
        f"/api/v1/namespaces/{bed.ns}/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 600},
        },
    )
    token = {"Authorization": f"Bearer {tr['status']['token']}"}
    user = f"system:serviceaccount:{bed.ns}:{sa}"
    assert await bed.direct("/stats/summary", headers=token) == (
        403,
        f"Forbidden (user={user}, verb=get, resource=nodes, subresource(s)=[stats])\n",
    )
    assert (await bed.direct("/containerLogs/default/x/y", headers=token))[0] == 403
    assert await bed.direct("/stats/summary", headers={"Authorization": "Bearer not-a-token"}) == (
        401,
        "Unauthorized",
    )
    # Through the API server the same user is refused pods/log by the API server's own RBAC.
    pod = await bed.create_pod(f"rbac-{uuid.uuid4().hex[:6]}")
    # Not the admin client's TLS context: its client certificate would authenticate as admin.
    sa_client = KubeClient(bed.kube.server, ssl._create_unverified_context(), token=tr["status"]["token"])
    try:
        with pytest.raises(ApiError) as e:
            await sa_client.get(f"/api/v1/namespaces/{bed.ns}/pods/{pod['metadata']['name']}/log")
        assert e.value.status == 403
    finally:
        await sa_client.close()
    # Granting nodes/stats makes the kubelet API allow it (once the deny cache expires).
    role = f"stats-{sa}"
    await bed.kube.post(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {
            "metadata": {"name": role},
            "rules": [{"apiGroups": [""], "resources": ["nodes/stats"], "verbs": ["get"]}],
        },
    )
    await bed.kube.post(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": bed.ns}],
        },
    )
    try:
        for _ in range(50):
            status, _ = await bed.direct("/stats/summary", headers=token)
            if status == 200:
                break
            await asyncio.sleep(0.2)
        assert status == 200
        assert (await bed.direct("/pods", headers=token))[0] == 403
    finally:
        await bed.kube.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{role}")
        await bed.kube.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{role}")
        await bed.kube.delete(f"/api/v1/namespaces/{bed.ns}/serviceaccounts/{sa}")
