"""containerd goes away for a while: the node turns NotReady with a reason, comes back Ready,
and the pods stay consistent (no container restarted or duplicated, exits seen meanwhile land).

Stops the test bed's (session-shared) containerd: it is always started again, even on failure.
"""

from __future__ import annotations

import asyncio
from typing import Any

from e2e_helpers import E2E, LEVEL, pod_spec, wait_for

LOOP = "trap 'exit 0' TERM; echo up; while true; do sleep 1; done"


def _pod(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _cstatus(p: dict[str, Any]) -> dict[str, Any]:
    (cs,) = p["status"]["containerStatuses"]
    return dict(cs)


async def test_containerd_outage_node_not_ready_then_ready_pods_consistent(e2e: E2E) -> None:
    containerd = e2e.testbed.containerd
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    await e2e.client.post(
        f"/api/v1/namespaces/{ns}/pods", _pod("long", pod_spec(node, LOOP, e2e.busybox, "Always"))
    )
    # exits on its own, most likely while containerd is down
    await e2e.client.post(
        f"/api/v1/namespaces/{ns}/pods",
        _pod("short", pod_spec(node, "echo start; sleep 6; echo end", e2e.busybox)),
    )

    async def both_running() -> list[dict[str, Any]] | None:
        pods = await e2e.pods(ns)
        ok = len(pods) == 2 and all(p["status"].get("phase") == "Running" for p in pods)
        return pods if ok else None

    await wait_for(both_running, 120, 0.2, "pods running")
    await wait_for(lambda: _ready_is(e2e, node, "True"), 60, 0.5, "node Ready")
    long_before = _cstatus(await e2e.pod(ns, "long"))
    ids_before = {c.id for c in await e2e.containers(node)}

    containerd.stop_daemon()
    try:
        cond = await wait_for(lambda: _ready_is(e2e, node, "False"), 120, 0.5, "node NotReady")
        assert cond["reason"] == "KubeletNotReady", cond
        assert "container runtime is not ready" in cond["message"], cond
        assert "ContainerRuntimeDown" in cond["message"], cond
        # while the runtime is away warmlet reports nothing new about the pods
        assert (await e2e.pod(ns, "long"))["status"]["phase"] == "Running"
        await asyncio.sleep(8)  # let the short container exit while containerd is down
    finally:
        await asyncio.to_thread(containerd.start_daemon)

    cond = await wait_for(lambda: _ready_is(e2e, node, "True"), 120, 0.5, "node Ready again")
    assert cond["reason"] == "KubeletReady", cond
    short = await wait_for(lambda: _phase(e2e, ns, "short", "Succeeded"), 120, 0.5, "short pod Succeeded")
    term = _cstatus(short)["state"]["terminated"]
    assert term["exitCode"] == 0 and _cstatus(short)["restartCount"] == 0, term
    # (what a container writes while containerd is down is lost: containerd itself copies the
    # output into the CRI log file, which is how every kubelet on containerd 1.6 behaves)
    status, text = await e2e.pod_log(ns, "short")
    assert status == 200 and text.startswith("start\n"), (status, text)

    # the long-running pod kept its container: same ID, same start, never restarted
    long_after = await e2e.pod(ns, "long")
    cs = _cstatus(long_after)
    assert long_after["status"]["phase"] == "Running"
    assert cs["containerID"] == long_before["containerID"] and cs["restartCount"] == 0, cs
    assert cs["state"]["running"]["startedAt"] == long_before["state"]["running"]["startedAt"]
    conts = await e2e.containers(node)
    running = [c for c in conts if c.state == 1]  # CONTAINER_RUNNING
    assert [c.id for c in running] == [long_before["containerID"].split("//")[1]]
    assert {c.id for c in conts} <= ids_before  # nothing new was created
    assert all(c.metadata.attempt == 0 for c in conts)

    # and the node runs new pods again (warm pools and all)
    await e2e.client.post(
        f"/api/v1/namespaces/{ns}/pods", _pod("after", pod_spec(node, "echo again", e2e.busybox))
    )
    after = await wait_for(lambda: _phase(e2e, ns, "after", "Succeeded"), 120, 0.5, "new pod after outage")
    assert after["metadata"]["annotations"].get(LEVEL)


async def _ready_is(e2e: E2E, node: str, status: str) -> dict[str, Any] | None:
    c = await e2e.ready_condition(node)
    return c if c.get("status") == status else None


async def _phase(e2e: E2E, ns: str, name: str, phase: str) -> dict[str, Any] | None:
    p = await e2e.pod(ns, name)
    return p if p["status"].get("phase") == phase else None
