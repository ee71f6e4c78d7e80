"""CriContainers.create_container's calls on a warm start: the image's answer from the ensure
just before (one ImageStatus per start, not two), and the log location checked until the runtime
is seen honouring the current pod's log directory (then never again), linked when it does not."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from common import crilog
from proto import cri_pb2 as pb
from sandbox.backend import ContainerSpec, PodSandboxSpec, PullPolicy
from sandbox.cri.containers import CriContainers
from sandbox.images import ImageCache, ImageInfo
from sandbox.pool_state import SandboxRecord

pytestmark = pytest.mark.unit


class Runtime:
    """CRI calls create_container makes; ``honours`` says whether the log lands where asked."""

    def __init__(self, log_dir: str, honours: bool) -> None:
        self.log_dir = log_dir
        self.honours = honours
        self.calls: list[str] = []
        self.images = {"reg.local/app:1": ImageInfo(id="sha256:app", size=1, uid=1234)}
        self.created: dict[str, tuple[pb.ContainerConfig, pb.PodSandboxConfig]] = {}

    # the image runtime of the cache
    async def status(self, image: str) -> ImageInfo | None:
        self.calls.append("ImageStatus")
        return self.images.get(image)

    # the CRI client
    async def create_container(
        self, sandbox_id: str, cfg: pb.ContainerConfig, sb: pb.PodSandboxConfig
    ) -> str:
        self.calls.append("CreateContainer")
        cid = f"c{len(self.created)}"
        self.created[cid] = (cfg, sb)
        return cid

    async def container_status(self, cid: str, verbose: bool = False) -> pb.ContainerStatusResponse:
        self.calls.append("ContainerStatus")
        cfg, sb = self.created[cid]
        where = sb.log_directory if self.honours else os.path.join(self.log_dir, "first-pod")
        return pb.ContainerStatusResponse(
            status=pb.ContainerStatus(id=cid, log_path=f"{where}/{cfg.log_path}")
        )


def pod(n: int) -> PodSandboxSpec:
    return PodSandboxSpec(
        uid=f"uid-{n}", namespace="ns", name=f"job-{n}", workload_key="k", hostname=f"job-{n}"
    )


def setup(tmp_path: Path, honours: bool) -> tuple[Runtime, CriContainers, ImageCache, SandboxRecord]:
    rt = Runtime(str(tmp_path), honours)
    images = ImageCache(rt)  # type: ignore[arg-type]
    ctx = SimpleNamespace(client=rt, log_dir=str(tmp_path), instance="t")

    def sandbox_config(spec: PodSandboxSpec, cgroup_parent: str = "") -> pb.PodSandboxConfig:
        return pb.PodSandboxConfig(
            log_directory=crilog.pod_log_dir(str(tmp_path), spec.namespace, spec.name, spec.uid)
        )

    sandboxes = SimpleNamespace(
        sandbox_config=sandbox_config, facts=SimpleNamespace(cgroup_parent=lambda sid: "")
    )
    rec = SandboxRecord(sandbox_id="sb1", key="k", namespace="ns", state="in_use", from_pool=True, uses=2)
    pool: Any = SimpleNamespace(records={"sb1": rec})
    containers = CriContainers(
        ctx,  # type: ignore[arg-type]
        pool,
        sandboxes,  # type: ignore[arg-type]
        images,
        reaper=None,  # type: ignore[arg-type]
        oom=None,  # type: ignore[arg-type]
        finished_states=lambda uid: None,
        node_memory_bytes=1 << 30,
    )
    return rt, containers, images, rec


async def start(containers: CriContainers, images: ImageCache, rec: SandboxRecord, n: int) -> str:
    p = pod(n)
    rec.pod_uid = p.uid
    await images.ensure("reg.local/app:1", PullPolicy.IF_NOT_PRESENT)
    return await containers.create_container(
        rec.info(), p, ContainerSpec(name="app", image="reg.local/app:1"), attempt=0
    )


async def test_a_runtime_honouring_the_log_directory_is_checked_once(tmp_path: Path) -> None:
    rt, containers, images, rec = setup(tmp_path, honours=True)
    cid = await start(containers, images, rec, 1)
    assert rt.calls == ["ImageStatus", "CreateContainer", "ContainerStatus"]
    cfg, _ = rt.created[cid]
    assert cfg.image.image == "sha256:app"
    rt.calls.clear()
    await start(containers, images, rec, 2)
    await start(containers, images, rec, 3)
    assert rt.calls == ["ImageStatus", "CreateContainer"] * 2  # one image answer, no log check


async def test_a_runtime_writing_elsewhere_is_linked_on_every_start(tmp_path: Path) -> None:
    rt, containers, images, rec = setup(tmp_path, honours=False)
    for n in (1, 2):
        rt.calls.clear()
        await start(containers, images, rec, n)
        assert rt.calls == ["ImageStatus", "CreateContainer", "ContainerStatus"]
        want = Path(containers.log_path("ns", f"job-{n}", f"uid-{n}", "app", 0))
        assert str(tmp_path / "first-pod") in os.readlink(want)  # a link to where it went
