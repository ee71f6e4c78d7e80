"""The provider uses the backend seam's typed parts only: the container-ID scheme the backend
declares, its capabilities, typed errors and the optional named protocols (never getattr, a
backend's name or an error's text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pod_fakes import FakeApi, FakeRecorder, make_pod, make_worker

from provider.config import WarmletConfig
from provider.cron_prewarm import CronPrewarmer
from provider.pods.controller import PodController
from sandbox.backend import (
    BackendCapabilities,
    BackendError,
    ContainerSpec,
    ContainerStartInProgressError,
    ContainerState,
    PodLifecycleAware,
    PodSandboxSpec,
    Prewarmer,
    Reconciler,
    SandboxInfo,
)
from sandbox.simulated import SimulatedBackend

pytestmark = pytest.mark.unit


class CrioLike(SimulatedBackend):
    name = "simulated"  # the name says nothing: only the declared scheme counts
    container_id_scheme = "cri-o"


class Lifecycle(SimulatedBackend):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.written: list[str] = []
        self.gone: list[str] = []

    async def final_status_written(self, pod_uid: str) -> None:
        self.written.append(pod_uid)

    async def pod_gone(self, pod_uid: str) -> None:
        self.gone.append(pod_uid)


class HalfLifecycle(SimulatedBackend):
    """Has a ``pod_gone`` but is not PodLifecycleAware: the provider must not call it."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gone: list[str] = []

    async def pod_gone(self, pod_uid: str) -> None:
        self.gone.append(pod_uid)


def test_simulated_backend_has_only_the_optional_protocols_it_implements(tmp_path: Path) -> None:
    b = SimulatedBackend(tmp_path)
    assert not isinstance(b, PodLifecycleAware)
    assert isinstance(b, Prewarmer) and isinstance(b, Reconciler)
    assert isinstance(Lifecycle(tmp_path), PodLifecycleAware)
    assert not isinstance(HalfLifecycle(tmp_path), PodLifecycleAware)


async def test_container_id_scheme_comes_from_the_backend(tmp_path: Path) -> None:
    api, rec = FakeApi(), FakeRecorder()
    worker = make_worker(tmp_path, api, CrioLike(tmp_path / "logs"), rec)
    api.add(make_pod("p1", "u1"))
    await worker.sync("u1")
    cid = api.pods["u1"]["status"]["containerStatuses"][0]["containerID"]
    assert cid.startswith("cri-o://"), cid


async def test_lifecycle_aware_backend_hears_final_status_and_pod_gone(tmp_path: Path) -> None:
    api, rec = FakeApi(), FakeRecorder()
    backend = Lifecycle(tmp_path / "logs")
    worker = make_worker(tmp_path, api, backend, rec)
    api.add(make_pod("job", "u1", "Never", {"warmlet.io/sim-run-seconds": "0"}))
    api.add(make_pod("web", "u2"))
    await worker.sync("u1")
    await worker.sync("u2")
    for _ in range(50):
        if await worker.sync("u1") is None and api.pods["u1"]["status"]["phase"] == "Succeeded":
            break
        await backend_settle()
    assert api.pods["u1"]["status"]["phase"] == "Succeeded"
    assert "u1" in backend.written and "u2" not in backend.written
    api.pods["u2"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    await worker.sync("u2")
    assert backend.gone == ["u2"]


async def backend_settle() -> None:
    import asyncio

    await asyncio.sleep(0)  # a container of sim-run-seconds 0 exits at the loop's next turn


async def test_backend_without_pod_lifecycle_protocol_is_not_called(tmp_path: Path) -> None:
    api, rec = FakeApi(), FakeRecorder()
    backend = HalfLifecycle(tmp_path / "logs")
    worker = make_worker(tmp_path, api, backend, rec)
    api.add(make_pod("web", "u1"))
    await worker.sync("u1")
    api.pods["u1"]["metadata"]["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    await worker.sync("u1")
    assert "u1" not in api.pods
    assert backend.gone == []  # a look-alike method is not the protocol


class StartTrouble(SimulatedBackend):
    """start_container fails with a chosen error while ``error`` is set."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.error: BackendError | None = None
        self.removed: list[str] = []

    async def start_container(self, container_id: str) -> None:
        if self.error is not None:
            raise self.error
        await super().start_container(container_id)

    async def remove_container(self, container_id: str) -> None:
        self.removed.append(container_id)
        await super().remove_container(container_id)


async def _created_but_not_started(tmp_path: Path, backend: StartTrouble) -> tuple[FakeApi, Any, str]:
    api, rec = FakeApi(), FakeRecorder()
    worker = make_worker(tmp_path, api, backend, rec)
    api.add(make_pod("p1", "u1"))
    backend.error = BackendError("the first start failed")
    await worker.sync("u1")  # created, its start failed: the container stays CREATED
    [c] = await backend.pod_containers("u1")
    assert c.state == ContainerState.CREATED
    return api, worker, c.container_id


async def test_start_in_progress_keeps_the_container_and_asks_again_soon(tmp_path: Path) -> None:
    backend = StartTrouble(tmp_path / "logs")
    api, worker, cid = await _created_but_not_started(tmp_path, backend)
    backend.error = ContainerStartInProgressError("busy")  # no runtime's wording needed
    retry = await worker.sync("u1")
    assert retry is not None and retry <= 1.0
    assert backend.removed == []
    assert [c.container_id for c in await backend.pod_containers("u1")] == [cid]
    backend.error = None
    await worker.sync("u1")  # the start's outcome: it runs; the same container, resumed
    [c] = await backend.pod_containers("u1")
    assert c.container_id == cid and c.state == ContainerState.RUNNING
    assert api.pods["u1"]["status"]["phase"] == "Running"


async def test_other_resume_errors_recreate_whatever_their_text(tmp_path: Path) -> None:
    backend = StartTrouble(tmp_path / "logs")
    _, worker, cid = await _created_but_not_started(tmp_path, backend)
    backend.error = BackendError('task in "starting state"')  # the text means nothing
    retry = await worker.sync("u1")
    assert retry is not None and retry <= 0.5
    assert backend.removed == [cid]


class Recording(SimulatedBackend):
    def __init__(self, *a: Any, runs_processes: bool, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.capabilities = BackendCapabilities(runs_processes=runs_processes)
        self.specs: list[ContainerSpec] = []

    async def create_container(
        self, sandbox: SandboxInfo, pod: PodSandboxSpec, container: ContainerSpec, attempt: int
    ) -> str:
        self.specs.append(container)
        return await super().create_container(sandbox, pod, container, attempt)


@pytest.mark.parametrize("runs_processes", [True, False])
async def test_pod_etc_files_only_for_backends_that_run_processes(
    tmp_path: Path, runs_processes: bool
) -> None:
    api, rec = FakeApi(), FakeRecorder()
    backend = Recording(tmp_path / "logs", runs_processes=runs_processes)
    worker = make_worker(tmp_path, api, backend, rec)
    api.add(make_pod("p1", "u1"))
    await worker.sync("u1")
    [spec] = backend.specs
    etc = {m.container_path for m in spec.mounts} & {"/etc/hosts", "/etc/resolv.conf", "/etc/hostname"}
    assert bool(etc) is runs_processes


class NoReconcile(SimulatedBackend):
    """A backend that is not a Reconciler (its reconcile attribute is not a method)."""

    reconcile = None  # type: ignore[assignment]


async def test_reconcile_only_for_reconcilers(tmp_path: Path) -> None:
    cfg = WarmletConfig()
    cfg.pods.volumes_dir = tmp_path / "pods"
    calls: list[set[str]] = []

    class Counting(SimulatedBackend):
        async def reconcile(self, live_pod_uids: set[str]) -> None:
            calls.append(set(live_pod_uids))

    for backend in (Counting(tmp_path / "a"), NoReconcile(tmp_path / "b")):
        ctl = PodController(cfg.node, cfg.pods, FakeApi(), backend, FakeRecorder(), {})  # type: ignore[arg-type]
        ctl.informer.reflector.objects["u1"] = make_pod("p1", "u1")
        assert await ctl.cleanup_orphans() == 0
        ctl.close()
    assert calls == [{"u1"}]


async def test_cron_prewarm_skips_backends_without_a_pool(tmp_path: Path) -> None:
    class NoPool:
        pass

    cfg = WarmletConfig()
    pw = CronPrewarmer(cfg.pool, cfg.pods, None, NoPool(), {}, [])  # type: ignore[arg-type]
    pw.cronjobs = {
        "cj": {"metadata": {"uid": "cj", "name": "c", "namespace": "ns"}, "spec": {"schedule": "* * * * *"}}
    }
    assert await pw.tick(0.0) == 0
    await pw.run()  # returns at once: nothing to prewarm with
