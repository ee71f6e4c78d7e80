"""Running pods' configMap/secret/downwardAPI/projected volumes follow their sources."""

from __future__ import annotations

import copy
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.clock import FakeClock
from provider.config import PodConfig
from provider.events import EventRecorder
from provider.pods.container_config import VOLUME_REFRESH_SECONDS, ContainerConfigResolver
from provider.pods.state import PodState
from provider.resolve_volumes import is_memory_backed, prepare_volumes
from provider.volume_refresh import refresh_volumes
from sandbox.backend import BackendCapabilities, SandboxInfo
from tests.unit.test_resolve_env_volumes import ALLOC, POD, Fake, b64


@pytest.fixture
def mem_dir(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not is_memory_backed(shm):
        pytest.skip("no tmpfs at /dev/shm")
    d = shm / f"warmlet-unit-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def read(*parts: str | Path) -> str | None:
    path = Path(*parts)
    return path.read_text() if path.exists() else None


VOLUMES: list[dict[str, Any]] = [
    {"name": "opt", "configMap": {"name": "later", "optional": True}},
    {"name": "sec", "secret": {"secretName": "sec"}},
    {
        "name": "info",
        "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
    },
    {"name": "proj", "projected": {"sources": [{"secret": {"name": "later-sec", "optional": True}}]}},
    {
        "name": "token",
        "projected": {
            "sources": [{"serviceAccountToken": {"path": "token"}}, {"configMap": {"name": "cfg"}}]
        },
    },
    {"name": "scratch", "emptyDir": {}},
]


def pod_with(volumes: list[dict[str, Any]]) -> dict[str, Any]:
    pod = copy.deepcopy(POD)
    pod["spec"]["volumes"] = volumes
    return pod


async def test_created_updated_and_relabelled_sources_reach_the_volume(tmp_path: Path, mem_dir: Path) -> None:
    fake = Fake()
    pod = pod_with(VOLUMES)
    paths = await prepare_volumes(pod, tmp_path, fake, "", "", ALLOC, memory_dir=mem_dir)
    assert read(paths["opt"], "k") is None
    calls = len(fake.token_calls)

    fake.cms["later"] = {"data": {"k": "v1"}}
    fake.secrets["sec"] = {"data": {"pw": b64("changed")}}
    fake.secrets["later-sec"] = {"data": {"s": b64("S")}}
    pod["metadata"]["labels"] = {"app": "z"}
    result = await refresh_volumes(pod, tmp_path, fake, "", "", ALLOC, memory_dir=mem_dir)
    assert result == {"opt": "updated", "sec": "updated", "info": "updated", "proj": "updated"}
    assert read(paths["opt"], "k") == "v1"
    assert read(paths["sec"], "pw") == "changed"
    assert read(paths["info"], "labels") == 'app="z"'
    assert read(paths["proj"], "s") == "S"
    assert len(fake.token_calls) == calls  # no TokenRequest per re-sync

    result = await refresh_volumes(pod, tmp_path, fake, "", "", ALLOC, memory_dir=mem_dir)
    assert set(result.values()) == {"unchanged"}

    del fake.secrets["sec"]  # a non-optional source gone: the volume keeps its files
    result = await refresh_volumes(pod, tmp_path, fake, "", "", ALLOC, memory_dir=mem_dir)
    assert result["sec"] == "error"
    assert read(paths["sec"], "pw") == "changed"


async def test_volumes_not_set_up_are_left_to_prepare(tmp_path: Path, mem_dir: Path) -> None:
    fake = Fake()
    fake.cms["later"] = {"data": {"k": "v"}}
    assert (
        await refresh_volumes(pod_with(VOLUMES[:1]), tmp_path, fake, "", "", ALLOC, memory_dir=mem_dir) == {}
    )
    assert not (tmp_path / "uid1").exists()


class Recorder(EventRecorder):
    def __init__(self) -> None:
        pass

    def record(self, *args: Any, **kwargs: Any) -> None:
        pass


async def test_resolver_resyncs_at_most_every_period_or_on_label_change(
    tmp_path: Path, mem_dir: Path
) -> None:
    clock = FakeClock()
    fake = Fake()
    cfg = PodConfig(volumes_dir=str(tmp_path), memory_volumes_dir=mem_dir)
    resolver = ContainerConfigResolver(cfg, BackendCapabilities(), fake, Recorder(), "h", ALLOC, clock)
    pod = pod_with(VOLUMES[:1])
    st = PodState(sandbox=SandboxInfo(sandbox_id="s", pod_uid="uid1", workload_key="w"))
    await resolver.resolve(pod, st, ["c"])
    target = Path(tmp_path, "uid1/volumes/kubernetes.io~configmap/opt/k")
    fake.cms["later"] = {"data": {"k": "v1"}}
    await resolver.refresh_volumes(pod, st)
    assert read(target) is None  # just set up: not before the period
    await clock.advance(VOLUME_REFRESH_SECONDS + 1)
    await resolver.refresh_volumes(pod, st)
    assert read(target) == "v1"
    fake.cms["later"] = {"data": {"k": "v2"}}
    await resolver.refresh_volumes(pod, st)
    assert read(target) == "v1"
    pod["metadata"]["annotations"] = {"note": "changed"}  # the pod itself changed: re-sync now
    await resolver.refresh_volumes(pod, st)
    assert read(target) == "v2"
