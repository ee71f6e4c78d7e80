"""Private images end to end: the bed's private registry (HTTPS, htpasswd) through the CRI backend.

One warmlet node, one namespace, in order (each step depends on what the previous pulled):
a pod with a correct dockerconfigjson pull secret runs the private busybox; a pod with a wrong
password ends in ErrImagePull/ImagePullBackOff with the registry's answer; a pod without a secret
(IfNotPresent, the image now on the node) does NOT start, because the image was pulled with
credentials it does not hold (KEP-2535) and its own anonymous pull is refused; credentials from
the ServiceAccount's imagePullSecrets and from a legacy dockercfg secret work (pull policy Always,
so the registry checks them).
"""

from __future__ import annotations

import base64
import json
from typing import Any

from e2e_helpers import E2E, pod_spec, wait_for


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _dockerconfigjson(name: str, registry: str, user: str, password: str) -> dict[str, Any]:
    auth = _b64(f"{user}:{password}")
    doc = {"auths": {f"https://{registry}": {"auth": auth}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": _b64(json.dumps(doc))},
    }


def _dockercfg(name: str, registry: str, user: str, password: str) -> dict[str, Any]:
    doc = {registry: {"username": user, "password": password, "email": "e2e@example.invalid"}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/dockercfg",
        "data": {".dockercfg": _b64(json.dumps(doc))},
    }


def _waiting(p: dict[str, Any]) -> dict[str, Any]:
    for cs in (p.get("status") or {}).get("containerStatuses") or []:
        w = (cs.get("state") or {}).get("waiting")
        if w:
            return dict(w)
    return {}


async def _events(e2e: E2E, ns: str, pod: str) -> list[tuple[str, str]]:
    items = (await e2e.client.list_all(f"/api/v1/namespaces/{ns}/events"))["items"]
    return [
        (str(e.get("reason", "")), str(e.get("message", "")))
        for e in items
        if e["involvedObject"].get("name") == pod
    ]


async def test_private_registry_credentials(e2e: E2E) -> None:
    private = e2e.testbed.private
    image = private.image
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    api = f"/api/v1/namespaces/{ns}"
    await e2e.client.post(
        f"{api}/secrets", _dockerconfigjson("good", private.address, private.username, private.password)
    )
    await e2e.client.post(
        f"{api}/secrets", _dockerconfigjson("wrong", private.address, private.username, "nope")
    )
    await e2e.client.post(
        f"{api}/secrets", _dockercfg("legacy", private.address, private.username, private.password)
    )
    await e2e.client.post(
        f"{api}/serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "puller"},
         "imagePullSecrets": [{"name": "good"}]},
    )  # fmt: skip

    async def create(name: str, policy: str = "IfNotPresent", **extra: Any) -> None:
        spec = pod_spec(node, "echo private-ok", image, **extra)
        spec["containers"][0]["imagePullPolicy"] = policy
        await e2e.client.post(
            f"{api}/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
        )

    async def succeeded(name: str) -> bool:
        p = await e2e.pod(ns, name)
        assert p["status"].get("phase") != "Failed", p["status"]
        return p["status"].get("phase") == "Succeeded"

    async def backing_off(name: str) -> dict[str, Any] | None:
        w = _waiting(await e2e.pod(ns, name))
        return w if w.get("reason") == "ImagePullBackOff" else None

    # 1. the right credentials: pulled from the private registry, runs
    await create("good", imagePullSecrets=[{"name": "good"}])
    await wait_for(lambda: succeeded("good"), 120, 0.5, "pod with a correct pull secret succeeds")
    assert ("Pulled", f'Container image "{image}" already present on machine') not in await _events(
        e2e, ns, "good"
    )

    # 2. a wrong password: the registry refuses; ErrImagePull then ImagePullBackOff with its answer
    await create("wrong", imagePullSecrets=[{"name": "wrong"}])
    back = await wait_for(lambda: backing_off("wrong"), 120, 0.5, "wrong credentials back off")
    assert image in back["message"] and "401 Unauthorized" in back["message"], back
    assert back["message"].startswith(f'Back-off pulling image "{image}"'), back
    assert ("Failed", "Error: ErrImagePull") in await _events(e2e, ns, "wrong")

    # 3. no secret, IfNotPresent, the image present on the node since step 1: must not run it
    await create("nosecret")
    back = await wait_for(lambda: backing_off("nosecret"), 120, 0.5, "no credentials back off")
    assert image in back["message"] and "401 Unauthorized" in back["message"], back
    p = await e2e.pod(ns, "nosecret")
    assert p["status"]["phase"] == "Pending"
    uid = p["metadata"]["uid"]
    assert not await e2e.containers(node, **{"warmlet.io/pod-uid": uid})

    # 4. the ServiceAccount's imagePullSecrets (Always: the registry checks them again)
    await create("viasa", policy="Always", serviceAccountName="puller")
    await wait_for(lambda: succeeded("viasa"), 120, 0.5, "ServiceAccount pull secret works")

    # 5. a legacy kubernetes.io/dockercfg secret
    await create("legacy", policy="Always", imagePullSecrets=[{"name": "legacy"}])
    await wait_for(lambda: succeeded("legacy"), 120, 0.5, "dockercfg pull secret works")

    # 6. a pull secret that does not exist: kubelet's Warning, the pull is attempted anyway
    await create("missing", imagePullSecrets=[{"name": "no-such-secret"}, {"name": "good"}])
    await wait_for(lambda: succeeded("missing"), 120, 0.5, "pod with one missing secret succeeds")
    assert (
        "FailedToRetrieveImagePullSecret",
        "Unable to retrieve some image pull secrets (no-such-secret); "
        "attempting to pull the image may not succeed.",
    ) in await _events(e2e, ns, "missing")
