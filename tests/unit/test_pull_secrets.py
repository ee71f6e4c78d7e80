"""A pod's pull secrets (provider/pods/pull_secrets.py) and what ImagePuller passes across the seam."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

from pod_fakes import FakeRecorder

from common.clock import FakeClock
from provider.backoff import Backoff
from provider.kubeclient import ApiError
from provider.pods.images import ImagePuller
from provider.pods.pull_secrets import image_credentials, pull_secrets
from provider.pods.state import PodState
from sandbox.backend import ContainerSpec, ImageResult, PodSandboxSpec, PullPolicy, RegistryCredential
from sandbox.pool_state import TEMPLATE

JSON = dict[str, Any]


def _secret(name: str, registry: str, user: str) -> JSON:
    doc = {"auths": {registry: {"auth": base64.b64encode(f"{user}:pw".encode()).decode()}}}
    return {
        "metadata": {"name": name, "namespace": "ns"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(doc).encode()).decode()},
    }


class Source:
    def __init__(self, secrets: dict[str, JSON], sas: dict[str, JSON] | None = None) -> None:
        self.secrets = secrets
        self.sas = sas or {}
        self.reads: list[str] = []

    async def configmap(self, namespace: str, name: str) -> JSON | None:
        return None

    async def secret(self, namespace: str, name: str) -> JSON | None:
        self.reads.append(name)
        if name == "forbidden":
            raise ApiError(403, "Forbidden", "no")
        return self.secrets.get(name)

    async def serviceaccount(self, namespace: str, name: str) -> JSON | None:
        return self.sas.get(name)

    async def token(
        self,
        namespace: str,
        service_account: str,
        audiences: Sequence[str],
        expiration: int,
        pod: Mapping[str, Any],
    ) -> str:
        return ""


BAD = {"metadata": {"name": "bad"}, "type": "kubernetes.io/dockercfg", "data": {".dockercfg": "%%"}}


def pod(*names: str, sa: str = "") -> JSON:
    spec: JSON = {"imagePullSecrets": [{"name": n} for n in names]}
    if sa:
        spec["serviceAccountName"] = sa
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": spec}


async def test_missing_forbidden_and_invalid_secrets_are_reported_and_skipped() -> None:
    src = Source({"a": _secret("a", "reg.io", "alice"), "bad": BAD})
    found = await pull_secrets(src, pod("missing", "", "a", "forbidden", "bad", "a"))  # type: ignore[arg-type]
    assert src.reads == ["missing", "a", "forbidden", "bad"]  # empty names skipped, duplicates once
    assert found.missing == ["missing", "forbidden"]
    assert [w[0] for w in found.warnings()] == ["FailedToRetrieveImagePullSecret", "InvalidImagePullSecret"]
    assert found.warnings()[0][1] == (
        "Unable to retrieve some image pull secrets (missing, forbidden); "
        "attempting to pull the image may not succeed."
    )
    assert [c.username for c in found.keyring.lookup("reg.io/app")] == ["alice"]


async def test_service_account_secrets_only_for_templates_naming_none() -> None:
    src = Source(
        {"a": _secret("a", "reg.io", "alice"), "b": _secret("b", "reg.io", "bob")},
        {"robot": {"imagePullSecrets": [{"name": "b"}]}},
    )
    # an admitted pod already carries its ServiceAccount's secrets: only its own are read
    assert (await pull_secrets(src, pod(sa="robot"))).keyring.lookup("reg.io/x") == []  # type: ignore[arg-type]
    creds = await image_credentials(src, pod(sa="robot"), ["reg.io/x:1", "other.io/y"])  # type: ignore[arg-type]
    assert {k: [c.username for c in v] for k, v in creds.items()} == {"reg.io/x:1": ["bob"]}
    creds = await image_credentials(src, pod("a", sa="robot"), ["reg.io/x:1"])  # type: ignore[arg-type]
    assert [c.username for c in creds["reg.io/x:1"]] == ["alice"]


class Backend:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def ensure_image(
        self, image: str, policy: PullPolicy, credentials: Sequence[RegistryCredential] = ()
    ) -> ImageResult:
        self.calls.append((image, [c.username for c in credentials]))
        return ImageResult(image=image, image_ref="sha256:1", pulled=True, size_bytes=1)


async def test_image_puller_passes_the_matching_credentials_and_warns() -> None:
    src = Source({"a": _secret("a", "reg.io", "alice"), "b": _secret("b", "other.io", "bob")})
    backend, rec = Backend(), FakeRecorder()
    puller = ImagePuller(backend, rec, Backoff(10, 300), FakeClock(), source=src)  # type: ignore[arg-type]
    c = ContainerSpec(name="main", image="reg.io/team/app:1", pull_policy=PullPolicy.IF_NOT_PRESENT)
    assert await puller.ensure(pod("b", "gone", "a"), PodState(), c) is None
    assert backend.calls == [("reg.io/team/app:1", ["alice"])]
    assert ("p", "Warning", "FailedToRetrieveImagePullSecret") in [e[:3] for e in rec.events]


class PrewarmBackend:
    def __init__(self) -> None:
        self.specs: list[PodSandboxSpec] = []

    async def prewarm(self, pod: PodSandboxSpec, count: int) -> int:
        self.specs.append(pod)
        return count


async def test_cron_prewarm_pulls_with_the_template_credentials() -> None:
    from test_workload_cron import TAINT, cj, ts

    from provider.config import WarmletConfig
    from provider.cron_prewarm import CronPrewarmer

    cfg = WarmletConfig()
    cfg.pool.cron_lead_seconds = 20
    src = Source({"a": _secret("a", "reg.io", "alice")}, {"robot": {"imagePullSecrets": [{"name": "a"}]}})
    backend = PrewarmBackend()
    pw = CronPrewarmer(
        cfg.pool,
        cfg.pods,
        None,
        backend,
        {"kubernetes.io/hostname": "vn"},
        [TAINT],
        source=src,  # type: ignore[arg-type]
    )
    job = cj()
    tpl = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    tpl["containers"] = [{"name": "c", "image": "reg.io/team/app:1"}, {"name": "d", "image": "busybox:1"}]
    tpl["serviceAccountName"] = "robot"  # the template names no secret: its ServiceAccount's
    pw.cronjobs = {"cj1": job}
    assert await pw.tick(ts("2026-01-01T00:00:45")) == 3
    (spec,) = backend.specs
    assert {k: [c.username for c in v] for k, v in spec.pull_credentials.items()} == {
        "reg.io/team/app:1": ["alice"]
    }
    # never written to the pool's state file
    assert "pull_credentials" not in TEMPLATE.dump_python(spec, mode="json")
    assert b"alice" not in TEMPLATE.dump_json(spec)
