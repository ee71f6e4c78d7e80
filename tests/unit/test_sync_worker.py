"""The pod worker end to end against the simulated backend and an in-memory API (no cluster)."""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest
from pod_fakes import FakeApi, FakeRecorder, make_pod, make_worker

from common.clock import FakeClock
from provider.kubeclient import ApiError
from provider.pods.hold import STARTED_AT_ANNOTATION
from provider.pods.worker import DELETION_COST_ANNOTATION, START_LEVEL_ANNOTATION, PodWorker
from sandbox.backend import ContainerState
from sandbox.simulated import SimulatedBackend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def env(tmp_path: Path, clock: FakeClock) -> tuple[FakeApi, SimulatedBackend, FakeRecorder, PodWorker]:
    # One fake clock runs the simulated containers and the worker: time moves only when a test
    # advances it, so a container that runs 0.05 s exits exactly when the clock passes 0.05 s.
    api = FakeApi()
    backend = SimulatedBackend(tmp_path / "logs", clock=clock)
    rec = FakeRecorder()
    return api, backend, rec, make_worker(tmp_path, api, backend, rec, clock)


async def states(backend: SimulatedBackend, uid: str) -> list[ContainerState]:
    return [c.state for c in await backend.pod_containers(uid)]


async def run_out(clock: FakeClock, backend: SimulatedBackend, uid: str, seconds: float) -> None:
    """The pod's last container, started now and running ``seconds``: still running just before
    its end, exited exactly at it."""
    end = clock.monotonic() + seconds
    await clock.advance(0)  # its exit timer starts sleeping on the clock
    await clock.set(end - 0.001)
    assert (await states(backend, uid))[-1] == ContainerState.RUNNING
    await clock.set(end)
    assert (await states(backend, uid))[-1] == ContainerState.EXITED


async def test_pod_runs_and_is_annotated(env: Any) -> None:
    api, backend, rec, worker = env
    api.add(make_pod("p1", "u1"))
    assert await worker.sync("u1") is None
    pod = api.pods["u1"]
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["podIP"].startswith("10.")
    assert pod["status"]["containerStatuses"][0]["containerID"].startswith("simulated://")
    assert pod["metadata"]["annotations"][START_LEVEL_ANNOTATION] == "cold"
    assert pod["metadata"]["annotations"][DELETION_COST_ANNOTATION] == "-1000"
    assert rec.reasons() == ["Pulling", "Pulled", "Created", "Started"]
    assert worker.states["u1"].last_status is not None  # written; the sync has not seen it yet
    # a second sync changes nothing: no new patch, no new container; the API's copy now shows
    # the written status, which the worker lets go (one status per pod kept, not two)
    n = len(api.calls)
    await worker.sync("u1")
    assert len(api.calls) == n
    assert len(await backend.pod_containers("u1")) == 1
    assert worker.states["u1"].last_status is None


async def test_graceful_deletion_then_warm_start_for_same_workload(env: Any) -> None:
    api, backend, rec, worker = env
    api.add(make_pod("p1", "u1"))
    await worker.sync("u1")
    api.pods["u1"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    api.pods["u1"]["metadata"]["deletionGracePeriodSeconds"] = 5
    await worker.sync("u1")
    assert "u1" not in api.pods
    dele = [b for v, p, b in api.calls if v == "DELETE"]
    assert dele == [
        {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": "u1"}}
    ]
    assert "Killing" in rec.reasons("p1")
    assert backend.idle_sandboxes() == 1
    api.add(make_pod("p2", "u2"))
    await worker.sync("u2")
    assert api.pods["u2"]["metadata"]["annotations"][START_LEVEL_ANNOTATION] == "warm"
    api.add(make_pod("p3", "u3", owner="other-rs"))
    await worker.sync("u3")
    assert api.pods["u3"]["metadata"]["annotations"][START_LEVEL_ANNOTATION] == "image_cached"


async def test_missing_configmap_waits_then_runs(env: Any) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    c = {
        "name": "app",
        "image": "registry.local/app:1",
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "k"}}}],
    }
    api.add(make_pod("p1", "u1", containers=[c]))
    retry = await worker.sync("u1")
    assert retry is not None and retry <= 2
    cs = api.pods["u1"]["status"]["containerStatuses"][0]
    assert cs["state"]["waiting"] == {
        "reason": "CreateContainerConfigError",
        "message": 'configmap "late" not found',
    }
    assert api.pods["u1"]["status"]["phase"] == "Pending"
    api.configmaps["late"] = {"data": {"k": "v"}}
    await worker.sync("u1")
    assert api.pods["u1"]["status"]["phase"] == "Running"


async def test_image_pull_error_then_backoff(env: Any) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    api.add(make_pod("p1", "u1", containers=[{"name": "app", "image": "registry.local/does-not-exist:1"}]))
    retry = await worker.sync("u1")
    assert retry == 10
    w = api.pods["u1"]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert w["reason"] == "ErrImagePull" and "not found" in w["message"]
    await worker.sync("u1")
    w = api.pods["u1"]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert w["reason"] == "ImagePullBackOff" and w["message"].startswith(
        'Back-off pulling image "registry.local/'
    )


async def test_invalid_image_name_stays_invalid_without_pull_backoff(env: Any) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    api.add(make_pod("p1", "u1", containers=[{"name": "app", "image": "UPPER/Case::bad"}]))
    for _ in range(3):  # every later sync keeps the reason: no pull was attempted, no back-off
        await worker.sync("u1")
        w = api.pods["u1"]["status"]["containerStatuses"][0]["state"]["waiting"]
        assert w["reason"] == "InvalidImageName", w
        assert w["message"].startswith('Failed to apply default image tag "UPPER/Case::bad"'), w
    assert rec.reasons().count("InspectFailed") == 1


async def test_short_container_finished_at_first_status_still_gets_start_level(
    env: Any, clock: FakeClock
) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    api.add(make_pod("p1", "u1", "Never", {"warmlet.io/sim-run-seconds": "0"}))
    start = backend.start_container

    async def start_and_exit(cid: str) -> None:  # the container is done before the first status
        await start(cid)
        await clock.advance(0)  # its 0 s run ends on its timer, before the worker reads a status
        assert await states(backend, "u1") == [ContainerState.EXITED]

    backend.start_container = start_and_exit  # type: ignore[method-assign]
    await worker.sync("u1")
    assert api.pods["u1"]["status"]["phase"] == "Succeeded"
    assert api.pods["u1"]["metadata"]["annotations"][START_LEVEL_ANNOTATION] in ("cold", "image_cached")


async def test_host_path_rejected(env: Any) -> None:
    api, backend, rec, worker = env
    api.add(make_pod("p1", "u1", volumes=[{"name": "h", "hostPath": {"path": "/var/run"}}]))
    await worker.sync("u1")
    st = api.pods["u1"]["status"]
    assert st["phase"] == "Failed" and st["reason"] == "UnsupportedOnVirtualNode"
    assert "hostPath volume 'h' (/var/run)" in st["message"]
    assert "UnsupportedOnVirtualNode" in rec.reasons()
    assert await backend.list_sandboxes() == []


async def test_completed_pod_releases_sandbox(env: Any, clock: FakeClock) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    api.add(make_pod("job-1", "u1", policy="Never", annotations={"warmlet.io/sim-run-seconds": "0.05"}))
    await worker.sync("u1")
    await run_out(clock, backend, "u1", 0.05)
    await worker.sync("u1")
    st = api.pods["u1"]["status"]
    assert st["phase"] == "Succeeded"
    assert st["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert backend.idle_sandboxes() == 1 and await backend.list_sandboxes() == []
    await worker.sync("u1")  # terminal: nothing more happens
    assert backend.idle_sandboxes() == 1


async def test_crash_loop_backoff(env: Any, clock: FakeClock) -> None:
    api, backend, rec, worker = env
    api.add(
        make_pod(
            "p1", "u1", annotations={"warmlet.io/sim-run-seconds": "0.01", "warmlet.io/sim-exit-code": "1"}
        )
    )
    await worker.sync("u1")
    await run_out(clock, backend, "u1", 0.01)
    await worker.sync("u1")  # first restart is immediate
    assert await states(backend, "u1") == [ContainerState.EXITED, ContainerState.RUNNING]
    await run_out(clock, backend, "u1", 0.01)
    await clock.advance(2)
    retry = await worker.sync("u1")
    assert retry == pytest.approx(8.0)  # the 10 s back-off counts from the exit, 2 s ago
    cs = api.pods["u1"]["status"]["containerStatuses"][0]
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["restartCount"] == 1
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert "BackOff" in rec.reasons()


async def test_init_containers_in_order(env: Any, clock: FakeClock) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    run = {"warmlet.io/sim-run-seconds.i1": "1", "warmlet.io/sim-run-seconds.i2": "1"}
    p = make_pod(
        "p1",
        "u1",
        annotations=run,
        initContainers=[
            {"name": "i1", "image": "registry.local/i:1"},
            {"name": "i2", "image": "registry.local/i:1"},
        ],
    )
    api.add(p)
    for init, before in (("i1", []), ("i2", [ContainerState.EXITED])):  # each runs 1 s, alone
        await worker.sync("u1")
        assert await states(backend, "u1") == [*before, ContainerState.RUNNING], init
        await clock.advance(0.5)
        await worker.sync("u1")  # while it runs: nothing more starts
        assert await states(backend, "u1") == [*before, ContainerState.RUNNING], init
        assert api.pods["u1"]["status"]["phase"] == "Pending"
        await run_out(clock, backend, "u1", 0.5)
    assert await worker.sync("u1") is None
    st = api.pods["u1"]["status"]
    assert st["phase"] == "Running"
    assert [s["state"]["terminated"]["reason"] for s in st["initContainerStatuses"]] == ["Completed"] * 2
    names = [c.name for c in await backend.pod_containers("u1")]
    assert names == ["i1", "i2", "app"]


async def test_restarted_worker_adopts_instead_of_duplicating(env: Any, clock: FakeClock) -> None:
    api, backend, rec, worker = env
    api.add(make_pod("p1", "u1"))
    await worker.sync("u1")
    before = await backend.pod_containers("u1")
    fresh = PodWorker(
        worker.pods_cfg,
        worker.host_ip,
        api,
        backend,
        api.pods.get,
        rec,
        worker.owners,
        worker.source,
        {"cpu": "16"},
        clock,
    )
    await fresh.sync("u1")
    after = await backend.pod_containers("u1")
    assert [c.container_id for c in after] == [c.container_id for c in before]
    assert backend.sandboxes_created == 1


async def test_pod_gone_from_api_is_cleaned(env: Any) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    api.add(make_pod("p1", "u1"))
    await worker.sync("u1")
    del api.pods["u1"]
    await worker.sync("u1")
    assert await backend.list_sandboxes() == []
    assert all(c.state == ContainerState.EXITED for c in await backend.pod_containers("u1"))


async def test_status_patch_skipped_when_unchanged(env: Any) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    pod = make_pod("p1", "u1")
    api.add(pod)
    await worker.sync("u1")
    snapshot = copy.deepcopy(api.pods["u1"])
    n = len(api.patches())
    api.pods["u1"] = snapshot
    await worker.sync("u1")
    assert len(api.patches()) == n


async def test_forbidden_annotations_do_not_block_the_pod(env: Any) -> None:
    """An admission that refuses the start annotations on the status write (403): the status goes
    again without them, the pod runs, and the next pod does the same."""
    api, backend, rec, worker = env  # noqa: RUF059
    real_patch = api.patch

    async def patch(path: str, body: Any, content_type: str = "", **params: Any) -> dict[str, Any]:
        if (body.get("metadata") or {}).get("annotations"):
            api.calls.append(("PATCH", path, body))
            raise ApiError(403, "Forbidden", "may not modify pod metadata")
        return await real_patch(path, body, content_type, **params)

    api.patch = patch
    api.add(make_pod("p1", "u1"))
    api.add(make_pod("p2", "u2"))
    assert await worker.sync("u1") is None
    assert await worker.sync("u2") is None
    for uid in ("u1", "u2"):
        assert api.pods[uid]["status"]["phase"] == "Running"
        assert START_LEVEL_ANNOTATION not in api.pods[uid]["metadata"]["annotations"]
    # refused once per pod, never retried by later syncs
    n = len(api.calls)
    await worker.sync("u1")
    assert len(api.calls) == n


async def test_start_annotations_lost_to_an_unreachable_api_are_written_by_the_next_sync(env: Any) -> None:
    """The API server down when the pod first runs (a held pod started at its instant during an
    outage, tests/faults/test_punctual_faults.py): the status write (with the annotations) fails,
    the sync fails and is retried; the retry writes both in one request (once counted in the
    start metrics)."""
    from prometheus_client import REGISTRY

    api, backend, rec, worker = env  # noqa: RUF059
    real_patch = api.patch
    down = [True]

    async def patch(path: str, body: Any, content_type: str = "", **params: Any) -> dict[str, Any]:
        if down[0]:
            raise ConnectionRefusedError(111, "Connect call failed")
        return await real_patch(path, body, content_type, **params)

    def starts() -> float:
        return REGISTRY.get_sample_value("warmlet_pod_starts_total", {"level": "cold"}) or 0.0

    api.patch = patch
    api.add(make_pod("p1", "u1"))
    before = starts()
    with pytest.raises(ConnectionRefusedError):
        await worker.sync("u1")
    assert START_LEVEL_ANNOTATION not in api.pods["u1"]["metadata"]["annotations"]
    down[0] = False
    await worker.sync("u1")
    assert api.pods["u1"]["metadata"]["annotations"][START_LEVEL_ANNOTATION] == "cold"
    assert api.pods["u1"]["status"]["phase"] == "Running"
    assert len(api.patches()) == 1 and api.patches("") == api.patches()
    assert starts() - before == 1
    assert len(await backend.pod_containers("u1")) == 1


KUBE_API_ACCESS = {
    "name": "kube-api-access-x",
    "projected": {
        "defaultMode": 420,
        "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {
                "downwardAPI": {
                    "items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]
                }
            },
        ],
    },
}


async def test_one_api_write_per_pod_start_on_the_simulated_backend(env: Any, tmp_path: Path) -> None:
    """A pod with the admission-injected token volume starts with exactly one API request: its
    status patch, already Running with IPs and container statuses, carrying the start annotations.
    No TokenRequest, no annotation patch of its own, no volume file (nothing reads it)."""
    api, backend, rec, worker = env  # noqa: RUF059
    api.configmaps["kube-root-ca.crt"] = {"data": {"ca.crt": "CA"}}
    mount = {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
    containers = [{"name": "app", "image": "registry.local/app:1", "volumeMounts": [mount]}]
    api.add(make_pod("p1", "u1", containers=containers, volumes=[KUBE_API_ACCESS]))
    assert await worker.sync("u1") is None
    writes = [(v, p) for v, p, _ in api.calls if v in ("PATCH", "POST", "PUT", "DELETE")]
    assert writes == [("PATCH", "/api/v1/namespaces/ns/pods/p1/status")]
    body = api.patches()[0]
    assert body["status"]["phase"] == "Running"
    assert body["status"]["podIP"] and body["status"]["hostIP"]
    assert body["status"]["podIPs"][0] == {"ip": body["status"]["podIP"]}
    assert body["status"]["hostIPs"][0] == {"ip": body["status"]["hostIP"]}
    assert body["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    assert {c["type"]: c["status"] for c in body["status"]["conditions"]}["Ready"] == "True"
    assert set(body["metadata"]["annotations"]) == {
        START_LEVEL_ANNOTATION,
        STARTED_AT_ANNOTATION,
        DELETION_COST_ANNOTATION,
    }
    assert not list((tmp_path / "pods").glob("**/token"))
    assert not (tmp_path / "pods-memory").exists() or not list((tmp_path / "pods-memory").iterdir())


async def test_a_missing_configmap_volume_is_still_a_failed_mount_on_the_simulated_backend(env: Any) -> None:
    api, backend, rec, worker = env  # noqa: RUF059
    vol = {"name": "cfg", "configMap": {"name": "absent"}}
    api.add(make_pod("p1", "u1", volumes=[vol]))
    await worker.sync("u1")
    w = api.pods["u1"]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert w["reason"] == "ContainerCreating" and 'configmap "absent" not found' in w["message"]
    assert "FailedMount" in rec.reasons()


async def test_every_per_pod_map_is_empty_after_pods_are_created_and_deleted(
    env: Any, clock: FakeClock
) -> None:
    """Bare pods (keyed by their own uid) and ReplicaSet pods, run through the work queue, then
    deleted gracefully: no state of theirs is left in the worker, the queue or the backend, and
    only the ReplicaSet's workload keeps (bounded) idle sandboxes."""
    from provider.pods.queue import WorkQueue

    api, backend, rec, worker = env  # noqa: RUF059
    queue = WorkQueue(worker.sync, workers=8, clock=clock)
    backend.subscribe(queue.add)
    runner = asyncio.create_task(queue.run())

    async def settle() -> None:  # no fake time passes: every sync and exit here is immediate
        wall = time.monotonic() + 60
        while time.monotonic() < wall:
            await clock.advance(0)  # runs what is ready, timers due now included
            if queue.idle:
                return
            # file removals run in threads (asyncio.to_thread): they take real time on a busy machine
            await asyncio.sleep(0.002)
        raise AssertionError("queue never idle")

    n = 30
    uids = [f"bare-{i}" for i in range(n)] + [f"rs-{i}" for i in range(n)]
    for uid in uids:
        api.add(make_pod(uid, uid, owner=None if uid.startswith("bare") else "web-rs"))
        queue.add(uid)
    await settle()
    assert all(api.pods[u]["status"]["phase"] == "Running" for u in uids)
    assert len(worker.states) == 2 * n and len(await backend.list_sandboxes()) == 2 * n
    for uid in uids:
        api.pods[uid]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
        queue.add(uid)
    await settle()
    for uid in uids:  # the watch's DELETED events
        queue.add(uid)
    await settle()
    runner.cancel()
    queue.close()

    assert api.pods == {}
    per_pod = {
        "worker.states": len(worker.states),
        "worker.restarts": len(worker.restarts),
        "worker.pulls": len(worker.pulls),
        "queue": len(queue._queued) + len(queue._active) + len(queue._dirty),
        "queue.failures": len(queue._failures),
        "queue.timers": len(queue._timers),
        "backend.sandboxes": len(backend.pool.by_pod),
        "backend.containers": len(backend.containers.by_id),
        "backend.pool_keys_of_bare_pods": sum(
            1
            for k in {
                *backend.pool.templates,
                *backend.pool.tracker.keys(),
                *backend.pool.index.workload_keys(),
            }
            if "/Pod/" in k
        ),
    }
    assert per_pod == dict.fromkeys(per_pod, 0)
    assert backend.idle_sandboxes() == backend.pool_max_per_workload  # the ReplicaSet's, capped


async def test_finished_pod_never_runs_again_from_a_stale_copy(env: Any, clock: FakeClock) -> None:
    """After release, a sync from a stale (still Running) informer copy must not start it again."""
    api, backend, rec, worker = env  # noqa: RUF059
    api.add(make_pod("job-1", "u1", policy="Never", annotations={"warmlet.io/sim-run-seconds": "0.05"}))
    await worker.sync("u1")
    stale = copy.deepcopy(api.pods["u1"])
    assert stale["status"]["phase"] == "Running"
    await run_out(clock, backend, "u1", 0.05)
    await worker.sync("u1")
    assert api.pods["u1"]["status"]["phase"] == "Succeeded"
    created = len(await backend.pod_containers("u1"))
    api.pods["u1"] = stale  # the informer still holds the Running copy
    await worker.sync("u1")
    assert await backend.list_sandboxes() == []
    assert len(await backend.pod_containers("u1")) == created


async def test_config_error_retries_back_off_and_create_nothing(env: Any, clock: FakeClock) -> None:
    """A missing Secret: CreateContainerConfigError, retries 2 s doubling to 30 s, no container."""
    api, backend, rec, worker = env  # noqa: RUF059
    c = {
        "name": "app",
        "image": "registry.local/app:1",
        "env": [{"name": "PW", "valueFrom": {"secretKeyRef": {"name": "late", "key": "pw"}}}],
    }
    api.add(make_pod("p1", "u1", containers=[c]))
    delays = []
    for _ in range(7):
        delays.append(await worker.sync("u1"))
        await clock.advance(delays[-1] or 0)
    assert delays == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert await backend.pod_containers("u1") == []
    cs = api.pods["u1"]["status"]["containerStatuses"][0]
    assert cs["state"]["waiting"]["reason"] == "CreateContainerConfigError"


async def test_active_deadline_fails_the_pod_on_time(env: Any, clock: FakeClock) -> None:
    api, backend, rec, worker = env
    api.add(make_pod("p1", "u1", activeDeadlineSeconds=5, terminationGracePeriodSeconds=0))
    retry = await worker.sync("u1")
    assert api.pods["u1"]["status"]["phase"] == "Running"
    assert retry is not None and 4.0 < retry <= 5.0  # requeued at the deadline, no polling
    await clock.advance(retry - 0.01)
    assert await worker.sync("u1") is not None
    assert api.pods["u1"]["status"]["phase"] == "Running"
    await clock.advance(0.02)
    assert await worker.sync("u1") is None
    st = api.pods["u1"]["status"]
    assert st["phase"] == "Failed"
    assert st["reason"] == "DeadlineExceeded"
    assert st["message"] == "Pod was active on the node longer than the specified deadline"
    assert "terminated" in st["containerStatuses"][0]["state"]
    assert {c["type"]: c.get("reason") for c in st["conditions"]}["Ready"] == "PodFailed"
    assert "DeadlineExceeded" in rec.reasons() and "Killing" in rec.reasons()
    assert ContainerState.RUNNING not in await states(backend, "u1")
    assert await backend.list_sandboxes() == []
    await worker.sync("u1")  # terminal: never runs again
    assert ContainerState.RUNNING not in await states(backend, "u1")


async def test_volumes_of_a_simulated_pod_are_never_refreshed(env: Any, clock: FakeClock) -> None:
    """Nothing was written, nothing reads them: no periodic volume re-sync on a simulated node."""
    from prometheus_client import REGISTRY

    api, backend, rec, worker = env  # noqa: RUF059
    api.configmaps["cfg"] = {"data": {"k": "v"}}
    api.add(make_pod("p1", "u1", volumes=[{"name": "cfg", "configMap": {"name": "cfg"}}]))

    def refreshes() -> float:
        return sum(
            REGISTRY.get_sample_value("warmlet_volume_refreshes_total", {"result": r}) or 0.0
            for r in ("updated", "unchanged", "error")
        )

    await worker.sync("u1")
    before = refreshes()
    await clock.advance(31.0)
    await worker.sync("u1")
    assert api.pods["u1"]["status"]["phase"] == "Running"
    assert refreshes() == before


async def test_a_new_pods_first_sync_lists_its_containers_once_before_starting(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing but the pod's own (serialized) sync creates its containers: found none before its
    sandbox, it has none after getting one, so the second list is not asked; any later sync, or a
    pod that had containers, lists again."""
    api, backend, rec, worker = env
    listed: list[str] = []
    real = backend.pod_containers

    async def counting(uid: str) -> Any:
        listed.append(uid)
        return await real(uid)

    monkeypatch.setattr(backend, "pod_containers", counting)
    open_at_patch: list[int] = []
    real_patch = api.patch

    async def patch(path: str, body: Any, *a: Any, **kw: Any) -> Any:
        open_at_patch.append(rec.status_first_open)
        return await real_patch(path, body, *a, **kw)

    monkeypatch.setattr(api, "patch", patch)
    api.add(make_pod("p1", "u1"))
    await worker.sync("u1")
    # the start's events were released before its status write: they never trail the status
    assert open_at_patch and not any(open_at_patch)
    assert api.pods["u1"]["status"]["phase"] == "Running"
    assert listed == ["u1", "u1"]  # before the sandbox, and after the start for the status
    assert rec.status_first_sections == 1  # its events waited for the start's runtime calls
    listed.clear()
    await worker.sync("u1")
    assert listed == ["u1"]  # a running pod's sync always asks the runtime
    assert rec.status_first_sections == 1  # that sync started nothing: no events held back
