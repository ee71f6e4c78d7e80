"""Lifecycle hooks end to end on the CRI backend: postStart before Running, a failing postStart
killed and restarted, preStop before SIGTERM and within the grace period, the sleep handler.

The hooks write into the pod's emptyDir, which the test reads from the host (the volume lives
under the node's work dir) while the pod runs and while it terminates.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from e2e_helpers import E2E, pod_spec, wait_for

from provider.kubeclient import ApiError

JSON = dict[str, Any]
SHARED = {"name": "shared", "emptyDir": {}}
MOUNT = [{"name": "shared", "mountPath": "/shared"}]


def hooked(
    node: str, image: str, command: str, lifecycle: JSON, restart: str = "Never", **extra: Any
) -> JSON:
    spec = pod_spec(node, command, image, restart, volumes=[SHARED], **extra)
    spec["containers"][0]["volumeMounts"] = MOUNT
    spec["containers"][0]["lifecycle"] = lifecycle
    return spec


async def create(e2e: E2E, ns: str, name: str, spec: JSON) -> str:
    pod = await e2e.client.post(
        f"/api/v1/namespaces/{ns}/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec},
    )
    return str(pod["metadata"]["uid"])


def host_file(root: Path, uid: str, name: str) -> Path | None:
    """The file ``name`` of the pod's emptyDir, seen from the host."""
    for p in root.rglob(name):
        if uid in str(p):
            return p
    return None


async def events(e2e: E2E, ns: str, pod: str) -> list[tuple[str, str, str]]:
    items = (await e2e.client.list_all(f"/api/v1/namespaces/{ns}/events"))["items"]
    return [
        (str(e.get("type")), str(e.get("reason")), str(e.get("message", "")))
        for e in items
        if e["involvedObject"].get("name") == pod
    ]


async def test_post_start_runs_before_the_container_is_running(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    post_start = {"exec": {"command": ["sh", "-c", "touch /shared/begun; sleep 3; echo hook > /shared/hook"]}}
    main = "trap 'exit 0' TERM; while [ ! -e /shared/hook ]; do sleep 0.1; done; cat /shared/hook; sleep 3600"
    uid = await create(e2e, ns, "ps", hooked(node, e2e.busybox, main, {"postStart": post_start}))

    begun = await wait_for(
        lambda: asyncio.to_thread(host_file, e2e.tmp, uid, "begun"), 120, 0.1, "hook begun"
    )
    assert begun is not None
    # the hook runs (3 s): the status must not say Running before it returned
    seen: list[str] = []
    while host_file(e2e.tmp, uid, "hook") is None:
        p = await e2e.pod(ns, "ps")
        seen.append(str(p["status"].get("phase")))
        assert not any(
            "running" in (cs.get("state") or {}) for cs in p["status"].get("containerStatuses") or []
        ), p["status"]
        await asyncio.sleep(0.1)
    assert "Running" not in seen and len(seen) >= 5, seen

    async def running() -> JSON | None:
        p = await e2e.pod(ns, "ps")
        return p if p["status"].get("phase") == "Running" else None

    await wait_for(running, 60, 0.2, "Running after the hook")
    # the main container read what the hook wrote (it was not waiting for it in vain)
    status, log = await wait_for(
        lambda: _log_with(e2e, ns, "ps", "hook"), 60, 0.3, "the main container read the hook's file"
    )
    assert status == 200 and "hook" in log
    reasons = [r for _, r, _ in await events(e2e, ns, "ps")]
    assert "FailedPostStartHook" not in reasons


async def _log_with(e2e: E2E, ns: str, name: str, text: str) -> tuple[int, str] | None:
    status, log = await e2e.pod_log(ns, name)
    return (status, log) if text in log else None


async def test_failing_post_start_is_killed_and_restarted(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    main = "trap 'exit 0' TERM; while true; do sleep 0.2; done"
    spec = hooked(
        node,
        e2e.busybox,
        main,
        {"postStart": {"exec": {"command": ["sh", "-c", "exit 7"]}}},
        "Always",
        terminationGracePeriodSeconds=2,
    )
    await create(e2e, ns, "bad", spec)

    async def restarted() -> JSON | None:
        p = await e2e.pod(ns, "bad")
        cs = (p["status"].get("containerStatuses") or [{}])[0]
        return cs if cs.get("restartCount", 0) >= 1 else None

    cs = await wait_for(restarted, 120, 0.3, "a restart after the failed postStart")
    assert cs["ready"] is False or "running" not in cs["state"] or cs["restartCount"] >= 1
    evs = await events(e2e, ns, "bad")
    assert ("Warning", "FailedPostStartHook", "PostStartHook failed") in evs, evs
    assert ("Normal", "Killing", "FailedPostStartHook") in evs, evs
    last = cs.get("lastState", {}).get("terminated") or {}
    assert last, cs  # the killed instance

    async def waiting_reason() -> str | None:
        p = await e2e.pod(ns, "bad")
        cs = (p["status"].get("containerStatuses") or [{}])[0]
        w = (cs.get("state") or {}).get("waiting") or {}
        return w.get("reason") if w.get("reason") in ("CrashLoopBackOff", "PostStartHookError") else None

    assert await wait_for(waiting_reason, 120, 0.2, "back-off after repeated postStart failures")


async def test_pre_stop_runs_before_sigterm_within_the_grace_period(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    # the TERM trap lingers 2 s so that the emptyDir can be read before the pod's files go
    main = "trap 'echo term >> /shared/marker; sleep 2; exit 0' TERM; while true; do sleep 0.2; done"
    pods = {
        # exec preStop: writes first, then takes 3 s, all before SIGTERM
        "order": hooked(
            node,
            e2e.busybox,
            main,
            {"preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /shared/marker; sleep 3"]}}},
            terminationGracePeriodSeconds=30,
        ),
        # a preStop far longer than the grace period is cut short at the grace period
        "long": hooked(
            node,
            e2e.busybox,
            main,
            {"preStop": {"exec": {"command": ["sleep", "60"]}}},
            terminationGracePeriodSeconds=3,
        ),
        # the sleep handler: 3 s before SIGTERM
        "nap": hooked(
            node, e2e.busybox, main, {"preStop": {"sleep": {"seconds": 3}}}, terminationGracePeriodSeconds=30
        ),
    }
    uids = {name: await create(e2e, ns, name, spec) for name, spec in pods.items()}

    async def all_running() -> bool:
        phases = [(await e2e.pod(ns, n))["status"].get("phase") for n in pods]
        return all(ph == "Running" for ph in phases)

    await wait_for(all_running, 120, 0.3, "the three pods running")

    began = time.monotonic()
    for name in pods:
        await e2e.client.delete(f"/api/v1/namespaces/{ns}/pods/{name}")
    marker: dict[str, str] = {}
    term_at: dict[str, float] = {}
    gone_at: dict[str, float] = {}
    while len(gone_at) < len(pods) and time.monotonic() - began < 90:
        for name, uid in uids.items():
            f = host_file(e2e.tmp, uid, "marker")
            if f is not None:
                try:
                    text = f.read_text()
                except OSError:
                    text = ""
                if text:
                    marker[name] = text
                if "term" in text and name not in term_at:
                    term_at[name] = time.monotonic() - began
            if name not in gone_at:
                try:
                    await e2e.pod(ns, name)
                except ApiError as e:
                    if e.not_found:
                        gone_at[name] = time.monotonic() - began
        await asyncio.sleep(0.05)

    assert set(gone_at) == set(pods), (gone_at, marker)
    # preStop ran before SIGTERM, and SIGTERM waited for it
    assert marker.get("order", "").split() == ["prestop", "term"], marker
    assert term_at["order"] >= 2.5, term_at
    assert term_at["nap"] >= 2.5, term_at
    # the 60 s hook was cut at the 3 s grace period (then SIGTERM, kubelet's minimum 2 s)
    assert 2.5 <= term_at["long"] < 20, term_at
    assert gone_at["long"] < 30, gone_at
    evs = await events(e2e, ns, "order")
    assert ("Normal", "Killing", "Stopping container main") in evs, evs
    assert not any(r == "FailedPreStopHook" for _, r, _ in evs), evs


CGI = (
    "mkdir -p /www/cgi-bin && printf '%s\\n' '#!/bin/sh' 'echo Content-Type: text/plain' 'echo'"
    " 'echo \"prestop $QUERY_STRING $HTTP_USER_AGENT\" >> /shared/marker' > /www/cgi-bin/hook"
    " && chmod +x /www/cgi-bin/hook && httpd -p 8080 -h /www"
)


async def test_http_pre_stop_reaches_the_pod_ip_by_port_name(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace()
    main = f"{CGI}; trap 'echo term >> /shared/marker; sleep 2; exit 0' TERM; while true; do sleep 0.2; done"
    pre_stop = {"httpGet": {"port": "web", "path": "/cgi-bin/hook?from=kubelet"}}
    spec = hooked(node, e2e.busybox, main, {"preStop": pre_stop}, terminationGracePeriodSeconds=30)
    spec["containers"][0]["ports"] = [{"name": "web", "containerPort": 8080}]
    uid = await create(e2e, ns, "web", spec)

    async def running() -> bool:
        return (await e2e.pod(ns, "web"))["status"].get("phase") == "Running"

    await wait_for(running, 120, 0.3, "the pod running")
    await e2e.client.delete(f"/api/v1/namespaces/{ns}/pods/web")

    async def marker() -> str | None:
        f = host_file(e2e.tmp, uid, "marker")
        text = f.read_text() if f is not None else ""
        return text if "term" in text else None

    text = await wait_for(marker, 60, 0.05, "the preStop request and then SIGTERM")
    lines = text.splitlines()
    assert lines[0] == "prestop from=kubelet kube-lifecycle/1.36" and lines[-1] == "term", lines
    evs = await events(e2e, ns, "web")
    assert not any(r == "FailedPreStopHook" for _, r, _ in evs), evs
