"""Deadlines and termination messages on the real bed (CRI backend, busybox), as kubelet reports them."""

from __future__ import annotations

from typing import Any

from e2e_helpers import E2E, pod_spec, wait_for

from proto import cri_pb2 as pb
from provider.timefmt import parse_rfc3339
from sandbox.cri import mapping as m
from testbed.testing import events_for

DEADLINE_MESSAGE = "Pod was active on the node longer than the specified deadline"


def pod(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


async def terminal(e2e: E2E, ns: str, name: str, within: float = 90) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        p = await e2e.pod(ns, name)
        return p if p["status"].get("phase") in ("Succeeded", "Failed") else None

    return await wait_for(done, within, 0.3, f"pod {name} terminal")


async def test_active_deadline_fails_the_pod_and_kills_its_container(e2e: E2E) -> None:
    cfg = e2e.config()
    await e2e.start(cfg)
    ns = await e2e.namespace()
    spec = pod_spec(cfg.node.name, "", e2e.busybox, "Never", activeDeadlineSeconds=5)
    spec["terminationGracePeriodSeconds"] = 2
    spec["containers"][0]["command"] = ["sleep", "3600"]  # PID 1 ignores TERM: KILLed after the grace
    await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", pod("deadline", spec))

    p = await terminal(e2e, ns, "deadline")
    st = p["status"]
    assert st["phase"] == "Failed"
    assert st["reason"] == "DeadlineExceeded"
    assert st["message"] == DEADLINE_MESSAGE
    (cs,) = st["containerStatuses"]
    term = cs["state"]["terminated"]
    assert term["exitCode"] == 137 and term["reason"] == "Error"
    assert cs["ready"] is False
    # on time: the deadline (5 s from startTime) + the grace period (2 s) + a little, no polling
    started, finished = parse_rfc3339(st["startTime"]), parse_rfc3339(term["finishedAt"])
    assert started is not None and finished is not None
    assert 5 <= finished - started <= 5 + 2 + 4, (st["startTime"], term["finishedAt"])
    ev = await events_for(e2e.client, ns, "DeadlineExceeded")
    assert ev and ev[0]["type"] == "Normal" and ev[0]["message"] == DEADLINE_MESSAGE
    assert await events_for(e2e.client, ns, "Killing")
    # nothing of it runs any more
    uid = p["metadata"]["uid"]
    live = [
        c
        for c in await e2e.containers(cfg.node.name, **{m.LABEL_POD_UID: uid})
        if c.state == pb.CONTAINER_RUNNING
    ]
    assert live == []


async def test_termination_messages_from_the_file_and_from_the_logs(e2e: E2E) -> None:
    cfg = e2e.config()
    await e2e.start(cfg)
    ns = await e2e.namespace()
    node = cfg.node.name
    fallback = pod_spec(node, "echo first line; sleep 0.3; echo last words >&2; exit 3", e2e.busybox)
    fallback["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    from_file = pod_spec(
        node, "printf 'written by the app' > /dev/termination-log; echo noise; exit 0", e2e.busybox
    )
    custom = pod_spec(node, "echo in the logs; printf custom > /tmp/msg; exit 1", e2e.busybox)
    custom["containers"][0]["terminationMessagePath"] = "/tmp/msg"
    file_only = pod_spec(node, "echo only in the logs; exit 4", e2e.busybox)  # File policy: no fallback
    for name, spec in (("fallback", fallback), ("file", from_file), ("custom", custom), ("plain", file_only)):
        await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", pod(name, spec))

    def terminated(p: dict[str, Any]) -> dict[str, Any]:
        return dict(p["status"]["containerStatuses"][0]["state"]["terminated"])

    t = terminated(await terminal(e2e, ns, "fallback"))
    assert (t["exitCode"], t["reason"], t.get("message")) == (3, "Error", "first line\nlast words\n")
    t = terminated(await terminal(e2e, ns, "file"))
    assert (t["exitCode"], t["reason"], t.get("message")) == (0, "Completed", "written by the app")
    t = terminated(await terminal(e2e, ns, "custom"))
    assert (t["exitCode"], t["reason"], t.get("message")) == (1, "Error", "custom")
    t = terminated(await terminal(e2e, ns, "plain"))
    assert (t["exitCode"], t["reason"], t.get("message")) == (4, "Error", None)
