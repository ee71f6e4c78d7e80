"""Smoke tests: the test bed's containerd runs pods over CRI and pulls from the loopback registry."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest_asyncio

from proto import cri_pb2 as pb
from proto import cri_pb2_grpc as pbg
from testbed import TestBed
from testbed.pytest_plugin import TestImages
from testbed.util import http_get


@pytest_asyncio.fixture(loop_scope="session")
async def cri(cri_endpoint: str) -> AsyncIterator[tuple[pbg.RuntimeServiceStub, pbg.ImageServiceStub]]:
    async with grpc.aio.insecure_channel(cri_endpoint) as ch:
        yield pbg.RuntimeServiceStub(ch), pbg.ImageServiceStub(ch)


async def test_cri_status_ready(cri: tuple[pbg.RuntimeServiceStub, pbg.ImageServiceStub]) -> None:
    rt, _ = cri
    v = await rt.Version(pb.VersionRequest(version="v1"))
    assert v.runtime_name == "containerd"
    st = await rt.Status(pb.StatusRequest())
    conds = {c.type: c.status for c in st.status.conditions}
    assert conds == {"RuntimeReady": True, "NetworkReady": True}


async def test_sandbox_and_container_log(
    cri: tuple[pbg.RuntimeServiceStub, pbg.ImageServiceStub],
    images: TestImages,
    testbed: TestBed,
    tmp_path: Path,
) -> None:
    rt, _ = cri
    uid = str(uuid.uuid4())
    logdir = tmp_path / "pod"
    logdir.mkdir()
    sb_cfg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="smoke", uid=uid, namespace="testbed", attempt=0),
        hostname="smoke",
        log_directory=str(logdir),
        labels={"warmlet.test": "smoke"},
        linux=pb.LinuxPodSandboxConfig(),
    )
    sb = (await rt.RunPodSandbox(pb.RunPodSandboxRequest(config=sb_cfg), timeout=60)).pod_sandbox_id
    try:
        status = (await rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=sb))).status
        assert status.state == pb.SANDBOX_READY
        # the bed's CNI bridge gave the pod its own address in the slot's subnet
        assert ipaddress.ip_address(status.network.ip) in ipaddress.ip_network(testbed.pod_subnet)

        cfg = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name="hello", attempt=0),
            image=pb.ImageSpec(image=images.busybox),
            command=["sh", "-c", "echo hello-from-testbed; echo to-stderr >&2; cat /etc/hostname"],
            log_path="hello/0.log",
        )
        cid = (
            await rt.CreateContainer(
                pb.CreateContainerRequest(pod_sandbox_id=sb, config=cfg, sandbox_config=sb_cfg)
            )
        ).container_id
        await rt.StartContainer(pb.StartContainerRequest(container_id=cid))
        deadline = time.monotonic() + 30
        while True:
            cs = (await rt.ContainerStatus(pb.ContainerStatusRequest(container_id=cid))).status
            if cs.state == pb.CONTAINER_EXITED:
                break
            assert time.monotonic() < deadline, "container did not exit"
            await asyncio.sleep(0.1)
        assert cs.exit_code == 0
        lines = (logdir / "hello" / "0.log").read_text().splitlines()
        # CRI log format: <RFC3339Nano> <stream> <P|F> <content>
        parsed = [ln.split(" ", 3)[1:] for ln in lines]
        assert ["stdout", "F", "hello-from-testbed"] in parsed
        assert ["stderr", "F", "to-stderr"] in parsed
        assert ["stdout", "F", "smoke"] in parsed
    finally:
        await rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=sb))
        await rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=sb))


async def test_fat_image_cold_pull_from_registry(
    cri: tuple[pbg.RuntimeServiceStub, pbg.ImageServiceStub],
    images: TestImages,
    registry: str,
    testbed: TestBed,
) -> None:
    _, img = cri
    catalog = json.loads(http_get(f"http://{registry}/v2/_catalog")[1])
    assert "warmlet/fat" in catalog["repositories"]
    spec = pb.ImageSpec(image=images.fat)
    if (await img.ImageStatus(pb.ImageStatusRequest(image=spec))).image.id:
        await img.RemoveImage(pb.RemoveImageRequest(image=spec))
    assert not (await img.ImageStatus(pb.ImageStatusRequest(image=spec))).image.id

    t0 = time.monotonic()
    ref = (await img.PullImage(pb.PullImageRequest(image=spec), timeout=120)).image_ref
    took = time.monotonic() - t0
    assert ref.startswith("sha256:")
    st = (await img.ImageStatus(pb.ImageStatusRequest(image=spec))).image
    assert st.id == ref
    assert images.fat in st.repo_tags
    assert st.size >= testbed.fat_mb * (1 << 20)
    print(f"cold pull of {images.fat} ({st.size >> 20} MiB) took {took:.2f}s")
    # and it is gone again when removed (the next pull is cold)
    await img.RemoveImage(pb.RemoveImageRequest(image=spec))
    assert not (await img.ImageStatus(pb.ImageStatusRequest(image=spec))).image.id
