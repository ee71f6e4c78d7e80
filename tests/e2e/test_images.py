"""Image errors end to end: a missing tag in the loopback registry, and an invalid reference."""

from __future__ import annotations

from typing import Any

from e2e_helpers import E2E, pod_spec, wait_for


def _waiting(p: dict[str, Any]) -> dict[str, Any]:
    for cs in (p.get("status") or {}).get("containerStatuses") or []:
        w = (cs.get("state") or {}).get("waiting")
        if w:
            return dict(w)
    return {}


async def test_missing_image_backs_off_and_invalid_reference_is_rejected(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    missing = f"{e2e.registry}/warmlet/busybox:no-such-tag-e2e"
    bad = "UPPER/Case::bad"
    for name, image in (("missing", missing), ("bad", bad)):
        await e2e.client.post(
            f"/api/v1/namespaces/{ns}/pods",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name},
                "spec": pod_spec(node, "true", image),
            },
        )

    async def reason_is(name: str, reason: str) -> dict[str, Any] | None:
        w = _waiting(await e2e.pod(ns, name))
        return w if w.get("reason") == reason else None

    # the pull fails (ErrImagePull with the registry's answer), then kubelet-style back-off
    events = await wait_for(
        lambda: _events(e2e, ns, "missing", "Error: ErrImagePull"), 120, 0.2, "ErrImagePull"
    )
    assert any(missing in m and "not found" in m for m in events), events
    back = await wait_for(lambda: reason_is("missing", "ImagePullBackOff"), 120, 0.5, "ImagePullBackOff")
    assert missing in back["message"] and "not found" in back["message"], back
    assert back["message"].startswith(f'Back-off pulling image "{missing}"'), back
    p = await e2e.pod(ns, "missing")
    assert p["status"]["phase"] == "Pending"

    inv = await wait_for(lambda: reason_is("bad", "InvalidImageName"), 120, 0.2, "InvalidImageName")
    assert bad in inv["message"] and "invalid reference format" in inv["message"], inv
    assert (await e2e.pod(ns, "bad"))["status"]["phase"] == "Pending"
    # nothing of the bad pod ever reached the runtime as a container
    uid = (await e2e.pod(ns, "bad"))["metadata"]["uid"]
    assert not await e2e.containers(cfg.node.name, **{"warmlet.io/pod-uid": uid})


async def _events(e2e: E2E, ns: str, pod: str, marker: str) -> list[str]:
    """Messages of the pod's events, if one of them equals ``marker`` (else empty)."""
    items = (await e2e.client.list_all(f"/api/v1/namespaces/{ns}/events"))["items"]
    msgs = [str(e.get("message", "")) for e in items if e["involvedObject"].get("name") == pod]
    return msgs if marker in msgs else []
