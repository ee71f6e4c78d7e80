"""Ephemeral containers on the CRI backend, end to end with the real ``kubectl debug`` through the
real API server: the debug container starts in the running pod's sandbox, with ``--target`` in the
target's process namespace (its ``ps`` lists the target's process; without a target it does not),
is reported in ephemeralContainerStatuses (terminated, exit 0) and never restarted, and the pod's
own container is neither restarted nor made unready. Fails without ephemeral container support
(the container was accepted by the API server and never started, with no status)."""

from __future__ import annotations

import asyncio
from typing import Any

from e2e_helpers import E2E, pod_spec, wait_for

from proto import cri_pb2 as pb
from testbed.testing import events_for

JSON = dict[str, Any]
MARK = "sleep 31337"  # the target container's process, as ps shows it


def eph(p: JSON, name: str) -> JSON | None:
    for s in (p.get("status") or {}).get("ephemeralContainerStatuses") or []:
        if s.get("name") == name:
            return dict(s)
    return None


def ready(p: JSON) -> str:
    return next(
        (c["status"] for c in (p.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), ""
    )


async def test_kubectl_debug_with_and_without_target(e2e: E2E) -> None:
    cfg = e2e.config()
    node = await e2e.start(cfg)
    ns = await e2e.namespace()
    spec = pod_spec(cfg.node.name, f"exec {MARK}", e2e.busybox, restart="Always")
    spec["containers"][0]["name"] = "app"
    await e2e.client.post(
        f"/api/v1/namespaces/{ns}/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec},
    )

    async def running() -> JSON | None:
        p = await e2e.pod(ns, "x")
        return p if (p.get("status") or {}).get("phase") == "Running" and ready(p) == "True" else None

    before = await wait_for(running, 120, 0.5, "pod x Running and Ready")
    app_before = before["status"]["containerStatuses"][0]

    async def kubectl(*args: str) -> str:
        return await asyncio.to_thread(e2e.testbed.kubectl, "-n", ns, *args)

    await kubectl("debug", "pod/x", f"--image={e2e.busybox}", "--target=app", "-c", "dbg", "--", "ps")
    await kubectl("debug", "pod/x", f"--image={e2e.busybox}", "-c", "solo", "--", "ps")

    async def terminated(name: str) -> JSON | None:
        s = eph(await e2e.pod(ns, name="x"), name)
        return s if s is not None and "terminated" in s["state"] else None

    for name in ("dbg", "solo"):
        s = await wait_for(lambda n=name: terminated(n), 120, 0.5, f"ephemeral container {name} terminated")
        t = s["state"]["terminated"]
        assert t["exitCode"] == 0 and t["reason"] == "Completed", s
        assert s["restartCount"] == 0 and s["ready"] is False
        assert s["containerID"].startswith("containerd://") and s["imageID"], s

    # the target's process namespace is shared: ps in dbg lists the app's process
    code, out = await e2e.pod_log(ns, "x", "dbg")
    assert code == 200 and MARK in out, out
    code, out = await e2e.pod_log(ns, "x", "solo")
    assert code == 200 and "ps" in out and MARK not in out, out

    # kubelet's events for the debug container
    started = [e["message"] for e in await events_for(e2e.client, ns, "Started")]
    assert "Started container dbg" in started and "Started container solo" in started

    # never restarted (restartPolicy Always), and the pod is the same pod
    await asyncio.sleep(3)
    after = await e2e.pod(ns, "x")
    for name in ("dbg", "solo"):
        s = eph(after, name)
        assert s is not None and "terminated" in s["state"] and s["restartCount"] == 0
    app = after["status"]["containerStatuses"][0]
    assert app["containerID"] == app_before["containerID"] and app["restartCount"] == 0
    assert "running" in app["state"] and after["status"]["phase"] == "Running" and ready(after) == "True"
    conts = await e2e.containers(cfg.node.name)
    names = sorted(c.metadata.name for c in conts)
    assert names == ["app", "dbg", "solo"], names  # one instance each: nothing was created again
    assert len({c.pod_sandbox_id for c in conts}) == 1  # all in the pod's own sandbox

    # a debug container still running when warmlet restarts is adopted (not started again), and
    # it ends with the pod
    await kubectl(
        "debug", "pod/x", f"--image={e2e.busybox}", "--target=app", "-c", "long", "--", "sleep", "600"
    )

    async def long_running() -> JSON | None:
        s = eph(await e2e.pod(ns, "x"), "long")
        return s if s is not None and "running" in s["state"] else None

    long = await wait_for(long_running, 120, 0.5, "ephemeral container long running")
    await e2e.stop(node)
    await e2e.start(cfg)
    await asyncio.sleep(3)
    p = await e2e.pod(ns, "x")
    assert eph(p, "long") == long and ready(p) == "True"
    assert p["status"]["containerStatuses"][0]["containerID"] == app_before["containerID"]
    names = sorted(c.metadata.name for c in await e2e.containers(cfg.node.name))
    assert names == ["app", "dbg", "long", "solo"], names
    await e2e.client.delete(f"/api/v1/namespaces/{ns}/pods/x")

    async def gone() -> bool:
        return not [c for c in await e2e.containers(cfg.node.name) if c.state != pb.CONTAINER_EXITED]

    await wait_for(gone, 120, 0.5, "every container of the deleted pod stopped")
