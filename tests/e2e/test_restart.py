"""warmlet restarts while pods run: nothing restarted or duplicated, the warm pool is adopted."""

from __future__ import annotations

from typing import Any

from e2e_helpers import E2E, LEVEL, pod_spec, wait_for

from sandbox.cri import mapping as m

LOOP = "trap 'exit 0' TERM; echo up; while true; do sleep 1; done"


def deployment(name: str, spec: dict[str, Any], replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
        },
    }


def _cstatus(p: dict[str, Any]) -> dict[str, Any]:
    (cs,) = p["status"]["containerStatuses"]
    return dict(cs)


async def test_restart_adopts_running_pods_and_the_pool(e2e: E2E) -> None:
    cfg = e2e.config()
    node = cfg.node.name
    first = await e2e.start(cfg)
    ns = await e2e.namespace()
    dep = f"/apis/apps/v1/namespaces/{ns}/deployments/d"
    await e2e.client.post(
        f"/apis/apps/v1/namespaces/{ns}/deployments",
        deployment("d", pod_spec(node, LOOP, e2e.busybox, "Always"), 3),
    )
    # a pod whose container exits while warmlet is down
    await e2e.client.post(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "late"},
            "spec": pod_spec(
                node, "trap 'exit 0' TERM; while [ ! -e /tmp/go ]; do sleep 0.2; done; echo bye", e2e.busybox
            ),
        },
    )

    async def running(n: int) -> list[dict[str, Any]] | None:
        pods = [p for p in await e2e.pods(ns, "app=d") if not p["metadata"].get("deletionTimestamp")]
        ok = len(pods) == n and all(
            p["status"].get("phase") == "Running" and p["metadata"].get("annotations", {}).get(LEVEL)
            for p in pods
        )
        return pods if ok else None

    await wait_for(lambda: running(3), 120, 0.5, "3 replicas running")
    await wait_for(lambda: _phase_is(e2e, ns, "late", "Running"), 120, 0.5, "late pod running")
    sandbox_of = {
        p["metadata"]["uid"]: await e2e.sandbox_of(node, p["metadata"]["uid"]) for p in await e2e.pods(ns)
    }

    # scale down: the removed replica's sandbox goes idle into the workload's pool
    await e2e.client.patch(dep, {"spec": {"replicas": 2}})
    pods = await wait_for(lambda: running(2), 120, 0.5, "2 replicas")
    backend: Any = first.backend

    async def one_idle() -> list[Any]:
        return backend.pool.idle(namespace=ns)

    (idle,) = await wait_for(one_idle, 60, 0.2, "an idle sandbox in the pool")
    gone = (
        set(sandbox_of)
        - {p["metadata"]["uid"] for p in pods}
        - {(await e2e.pod(ns, "late"))["metadata"]["uid"]}
    )
    assert {sandbox_of[u] for u in gone} == {idle.sandbox_id}

    before = {p["metadata"]["name"]: _cstatus(p) for p in [*pods, await e2e.pod(ns, "late")]}
    conts_before = {c.id: c for c in await e2e.containers(node)}
    assert {cs["containerID"].split("//")[1] for cs in before.values()} == set(conts_before)

    # stop warmlet (containers keep running), let the late pod's container exit meanwhile
    await e2e.stop(first)
    late = next(c for c in conts_before.values() if c.labels.get(m.K8S_POD_NAME) == "late")
    e2e.testbed.ctr("tasks", "exec", "--exec-id", "go", late.id, "sh", "-c", ": > /tmp/go")

    async def late_exited() -> bool:
        cs = await e2e.containers(node, **{m.LABEL_POD_UID: late.labels[m.LABEL_POD_UID]})
        return bool(cs) and cs[0].state == 2  # CONTAINER_EXITED

    await wait_for(late_exited, 60, 0.2, "late container exited while warmlet is down")

    second = await e2e.start(cfg)  # same node name, containerd, log and state dirs
    await wait_for(
        lambda: _phase_is(e2e, ns, "late", "Succeeded"), 120, 0.5, "late pod Succeeded after restart"
    )
    late_pod = await e2e.pod(ns, "late")
    term = _cstatus(late_pod)["state"]["terminated"]
    assert term["exitCode"] == 0 and _cstatus(late_pod)["containerID"] == before["late"]["containerID"]

    # scale up again: the new replica starts warm in the sandbox adopted from the pool
    await e2e.client.patch(dep, {"spec": {"replicas": 3}})
    pods3 = await wait_for(lambda: running(3), 120, 0.5, "3 replicas again")
    new = [p for p in pods3 if p["metadata"]["name"] not in before]
    assert len(new) == 1
    assert new[0]["metadata"]["annotations"][LEVEL] == "warm"
    assert await e2e.sandbox_of(node, new[0]["metadata"]["uid"]) == idle.sandbox_id

    # nothing restarted or duplicated: same containers, attempt 0, restartCount 0
    for p in pods3:
        name = p["metadata"]["name"]
        if name in before:
            cs = _cstatus(p)
            assert cs["containerID"] == before[name]["containerID"], name
            assert cs["restartCount"] == 0 and "running" in cs["state"], cs
            assert cs["state"]["running"]["startedAt"] == before[name]["state"]["running"]["startedAt"]
            assert await e2e.sandbox_of(node, p["metadata"]["uid"]) == sandbox_of[p["metadata"]["uid"]]
    conts_after = {c.id: c for c in await e2e.containers(node)}
    new_ids = set(conts_after) - set(conts_before)
    assert len(conts_after) == 3
    assert (
        len(new_ids) == 1 and conts_after[new_ids.pop()].labels[m.LABEL_POD_UID] == new[0]["metadata"]["uid"]
    )
    # every container from before is still there, except the late pod's (removed when its
    # finished pod's sandbox was scrubbed back to the pool)
    assert set(conts_before) - set(conts_after) == {late.id}
    assert all(c.metadata.attempt == 0 for c in conts_after.values())
    backend2: Any = second.backend
    in_use = [r for r in backend2.pool.records.values() if r.state == "in_use"]
    assert sorted(r.pod_uid for r in in_use) == sorted(p["metadata"]["uid"] for p in pods3)


async def _phase_is(e2e: E2E, ns: str, name: str, phase: str) -> bool:
    return bool((await e2e.pod(ns, name))["status"].get("phase") == phase)
