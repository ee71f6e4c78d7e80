"""warmlet runs its whole scenario as the ServiceAccount of kind-config/rbac.yaml, with exactly those rights.

The manifest is applied for real, a token is minted for the ServiceAccount with the guide's own
script (kind-config/host-kubeconfig.sh: TokenRequest via `kubectl create token`), and a warmlet
node runs on that kubeconfig: registration and heartbeats, lease, a Deployment with ConfigMap,
Secret and service-account-token volumes, a Job, a CronJob (read for prewarming and for its pods'
workload key), events, and the kubelet API's TokenReview/SubjectAccessReview and `kubectl logs`.
No API call of warmlet may be refused (403), and rights the manifest does not grant are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from provider.app import WarmletNode
from provider.kubeclient import ApiError, KubeClient
from provider.metrics import API_ERRORS, record_api_error
from testbed.bed import TestBed
from testbed.testing import create_namespace, list_pods, node_config, phase, pod_template, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RBAC = ROOT / "kind-config" / "rbac.yaml"
SA_USER = "system:serviceaccount:kube-system:warmlet"
JSON = dict[str, Any]


def forbidden_total() -> float:
    """warmlet_api_errors_total summed over every verb with code 403."""
    return sum(
        s.value
        for metric in API_ERRORS.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels.get("code") == "403"
    )


def mint_sa_kubeconfig(testbed: TestBed, kubeconfig: Path, out: Path) -> Path:
    """The README's host-mode step: kind-config/host-kubeconfig.sh against the current context."""
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "PATH": f"{testbed.info().bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    subprocess.run(
        ["sh", str(ROOT / "kind-config" / "host-kubeconfig.sh"), str(out), "1h"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out / "kubeconfig"


async def refused(call: Any) -> int:
    try:
        await call
    except ApiError as e:
        return e.status
    return 200


async def kubelet_get(port: int, path: str, token: str) -> tuple[int, str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
        s.get(f"https://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status, await r.text()


async def sa_token(admin: KubeClient, ns: str, sa: str) -> str:
    resp = await admin.post(
        f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    return str(resp["status"]["token"])


async def test_warmlet_scenario_with_exactly_the_manifest_rights(
    testbed: TestBed, kubeconfig: Path, tmp_path: Path
) -> None:
    testbed.kubectl("apply", "--server-side", "--field-manager=warmlet-rbac-test", "-f", str(RBAC))
    sa_kubeconfig = mint_sa_kubeconfig(testbed, kubeconfig, tmp_path / "sa")
    admin = await KubeClient.from_kubeconfig(str(kubeconfig))
    errors: list[tuple[str, int | str]] = []

    def on_error(verb: str, code: int | str) -> None:
        errors.append((verb, code))
        record_api_error(verb, code)

    client = await KubeClient.from_kubeconfig(str(sa_kubeconfig), on_error=on_error, max_connections=64)
    probe = await KubeClient.from_kubeconfig(str(sa_kubeconfig))  # the test's own calls as the SA
    me = await probe.post(
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    assert me["status"]["userInfo"]["username"] == SA_USER

    node = f"wl-rbac-{uuid.uuid4().hex[:6]}"
    cfg = node_config(sa_kubeconfig, tmp_path / "node", node_name=node)
    cfg.server.address = "127.0.0.1"
    cfg.server.authorization_mode = "Webhook"  # every kubelet API request: TokenReview + SAR
    cfg.server.client_ca_file = Path(testbed.client_ca_cert)  # the apiserver's client cert (kubectl logs)
    cfg.node.lease_renew_interval_seconds = 1.0
    cfg.node.status_update_interval_seconds = 2.0
    cfg.pods.pod_events = "all"  # kubelet's Normal pod events (off by default on a simulated node)
    forbidden_before = forbidden_total()
    wn = WarmletNode(cfg, client=client)
    ns = await create_namespace(admin, "rbac")
    scraper_role = f"wl-rbac-scraper-{ns}"
    try:
        await wn.start()
        # a CronJob first: it fires at the next minute while the rest runs
        cron_tmpl = pod_template(node, {"warmlet.io/sim-run-seconds": "1"}, restartPolicy="Never")
        await admin.post(
            f"/apis/batch/v1/namespaces/{ns}/cronjobs",
            {
                "apiVersion": "batch/v1",
                "kind": "CronJob",
                "metadata": {"name": "tick"},
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": cron_tmpl}}},
            },
        )
        await admin.post(
            f"/api/v1/namespaces/{ns}/configmaps",
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "cfg"},
                "data": {"greeting": "hi"},
            },
        )
        await admin.post(
            f"/api/v1/namespaces/{ns}/secrets",
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "sec"},
                "stringData": {"pw": "s3cret"},
            },
        )
        web = pod_template(
            node,
            {"warmlet.io/sim-log": "hello from web"},
            volumes=[
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "sec", "secret": {"secretName": "sec"}},
                {
                    "name": "tok",
                    "projected": {
                        "sources": [{"serviceAccountToken": {"path": "t", "audience": "warmlet-test"}}]
                    },
                },
            ],
        )
        web["metadata"]["labels"] = {"app": "web"}
        web["spec"]["containers"][0].update(
            env=[
                {"name": "G", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                {"name": "P", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "pw"}}},
            ],
            volumeMounts=[
                {"name": "cfg", "mountPath": "/etc/cfg"},
                {"name": "sec", "mountPath": "/etc/sec"},
                {"name": "tok", "mountPath": "/var/run/tok"},
            ],
        )
        await admin.post(
            f"/apis/apps/v1/namespaces/{ns}/deployments",
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "template": web},
            },
        )
        job_tmpl = pod_template(node, {"warmlet.io/sim-run-seconds": "1"}, restartPolicy="Never")
        job_tmpl["metadata"]["labels"] = {"app": "batch"}
        await admin.post(
            f"/apis/batch/v1/namespaces/{ns}/jobs",
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": "batch"},
                "spec": {"completions": 2, "parallelism": 2, "template": job_tmpl},
            },
        )

        async def web_running() -> list[JSON] | None:
            pods = [p for p in await list_pods(admin, ns, "app=web") if phase(p) == "Running"]
            return pods if len(pods) == 3 else None

        pods = await wait_for(web_running, 120, 0.5, "3 Running web pods")
        assert all(p["spec"]["nodeName"] == node for p in pods)
        # keyed by the Deployment without reading its ReplicaSet (not granted)
        keys = {s.workload_key for s in await wn.backend.list_sandboxes()}
        assert any(k.startswith(f"{ns}/Deployment/web#") for k in keys), keys

        async def job_complete() -> bool:
            job = await admin.get(f"/apis/batch/v1/namespaces/{ns}/jobs/batch")
            return int((job.get("status") or {}).get("succeeded") or 0) == 2

        await wait_for(job_complete, 120, 0.5, "Job batch complete")

        # heartbeats: the Lease is renewed and the Node's Ready condition refreshed
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}"
        lease = await admin.get(lease_path)
        assert lease["spec"]["holderIdentity"] == node

        async def renewed() -> bool:
            return bool((await admin.get(lease_path))["spec"]["renewTime"] != lease["spec"]["renewTime"])

        await wait_for(renewed, 30, 0.5, "a lease renewal")
        node_obj = await admin.get(f"/api/v1/nodes/{node}")
        ready = next(c for c in node_obj["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"

        async def heartbeat() -> bool:
            n = await admin.get(f"/api/v1/nodes/{node}")
            r = next(c for c in n["status"]["conditions"] if c["type"] == "Ready")
            return bool(r["lastHeartbeatTime"] != ready["lastHeartbeatTime"])

        await wait_for(heartbeat, 60, 0.5, "a node status heartbeat")

        # events written as the ServiceAccount
        async def started_events() -> bool:
            evs = (await admin.list_all(f"/api/v1/namespaces/{ns}/events"))["items"]
            uids = {e["involvedObject"]["uid"] for e in evs if e["reason"] == "Started"}
            return {p["metadata"]["uid"] for p in pods} <= uids

        await wait_for(started_events, 60, 0.5, "Started events of the web pods")

        # kubelet API: a bearer token is authenticated (TokenReview) and authorized (SAR) by warmlet
        port = int(wn._api_server.port)
        await admin.post(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "scraper"}})
        await admin.post(
            "/apis/rbac.authorization.k8s.io/v1/clusterroles",
            {
                "metadata": {"name": scraper_role},
                "rules": [
                    {"apiGroups": [""], "resources": ["nodes/proxy", "nodes/metrics"], "verbs": ["get"]}
                ],
            },
        )
        await admin.post(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            {
                "metadata": {"name": scraper_role},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": scraper_role,
                },
                "subjects": [{"kind": "ServiceAccount", "name": "scraper", "namespace": ns}],
            },
        )
        scraper = await sa_token(admin, ns, "scraper")

        async def scraper_allowed() -> tuple[int, str] | None:
            status, body = await kubelet_get(port, "/pods", scraper)
            return (status, body) if status == 200 else None  # the RBAC cache may lag a moment

        _, body = await wait_for(scraper_allowed, 30, 0.5, "kubelet API /pods for the scraper")
        assert all(p["metadata"]["name"] in body for p in pods)
        assert (await kubelet_get(port, "/metrics", scraper))[0] == 200
        # warmlet's own token is valid but not allowed nodes/proxy: the SAR says no
        own = yaml.safe_load(sa_kubeconfig.read_text())["users"][0]["user"]["token"]
        assert (await kubelet_get(port, "/pods", own))[0] == 403
        assert (await kubelet_get(port, "/pods", "not-a-token"))[0] == 401
        # the apiserver → kubelet API path (client certificate) of `kubectl logs`
        logs = await asyncio.to_thread(testbed.kubectl, "logs", "-n", ns, pods[0]["metadata"]["name"])
        assert "hello from web" in logs

        # the CronJob: listed for prewarming, and its pods keyed by the CronJob (read, never its Job)
        assert wn.prewarmer is not None

        async def cron_listed() -> bool:
            return any(c["metadata"]["namespace"] == ns for c in wn.prewarmer.cronjobs.values())  # type: ignore[union-attr]

        await wait_for(cron_listed, 30, 0.5, "the CronJob in the prewarmer's list")

        async def cron_pod_done() -> bool:
            pods = await list_pods(admin, ns)
            cron = [p for p in pods if p["metadata"].get("labels", {}).get("batch.kubernetes.io/job-name", "")
                    .startswith("tick-")]  # fmt: skip
            return bool(cron) and all(phase(p) == "Succeeded" for p in cron)

        await wait_for(cron_pod_done, 150, 1.0, "the CronJob's pod Succeeded")
        # released to the CronJob's pool (the key prewarming computes), not to a per-Job one
        keys = {r.key for r in wn.backend.pool.records.values()}  # type: ignore[attr-defined]
        assert any(k.startswith(f"{ns}/CronJob/tick#") for k in keys), keys

        # nothing warmlet asked for was refused
        assert [e for e in errors if e[1] == 403] == [], errors
        assert forbidden_total() == forbidden_before

        # and what the manifest does not grant is refused to the ServiceAccount
        refusals = {
            "delete a namespace": await refused(probe.delete(f"/api/v1/namespaces/{ns}")),
            "list secrets cluster-wide": await refused(probe.get("/api/v1/secrets")),
            "list secrets in a namespace": await refused(probe.get(f"/api/v1/namespaces/{ns}/secrets")),
            "create a pod": await refused(
                probe.post(f"/api/v1/namespaces/{ns}/pods", {"apiVersion": "v1", "kind": "Pod", **web})
            ),
            "read ReplicaSets": await refused(probe.get(f"/apis/apps/v1/namespaces/{ns}/replicasets")),
            "read Jobs": await refused(probe.get(f"/apis/batch/v1/namespaces/{ns}/jobs/batch")),
            "leases outside kube-node-lease": await refused(
                probe.get("/apis/coordination.k8s.io/v1/namespaces/kube-system/leases")
            ),
            "delete a node": await refused(probe.delete(f"/api/v1/nodes/{node}")),
            "update a CronJob": await refused(
                probe.patch(f"/apis/batch/v1/namespaces/{ns}/cronjobs/tick", {"spec": {"suspend": True}})
            ),
        }
        assert refusals == dict.fromkeys(refusals, 403), refusals
    finally:
        # pods deleted while the node runs: warmlet removes their volumes (tmpfs mounts) itself
        with contextlib.suppress(Exception):
            await admin.delete(f"/api/v1/namespaces/{ns}")

            async def no_pods() -> bool:
                return not await list_pods(admin, ns)

            await wait_for(no_pods, 60, 0.5, "the namespace's pods gone")
        await wn.stop()
        for path in (
            f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{scraper_role}",
            f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{scraper_role}",
            f"/api/v1/nodes/{node}",
        ):
            try:
                await admin.delete(path)
            except ApiError:
                pass
        await probe.close()
        await admin.close()
