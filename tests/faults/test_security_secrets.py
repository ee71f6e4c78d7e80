"""Secrets and service-account tokens live only in memory and go with the pod.

The node runs with the production layout (``memory_volumes_dir`` unset: ``<volumes_dir>-memory``
on disk, so warmlet must mount a tmpfs there). Pods mount a Secret, a projected service-account
token and an emptyDir{medium: Memory}. Checked from the host: the memory root is a tmpfs mount
point (/proc/self/mountinfo) and every volume directory is on tmpfs (statfs f_type
TMPFS_MAGIC); the container sees tmpfs at its mount points; no byte of the secret or token is
anywhere under the disk volumes dir. After the pod is deleted its directories are gone; a pod
deleted while warmlet was down has its volumes removed when warmlet starts again.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import E2E, pod_spec, wait_for

from provider.resolve_volumes import is_memory_backed, memory_root

pytestmark = pytest.mark.faults

SECRET = "s3cret-value-7f3a"


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as f:
        return {ln.split(" ")[4] for ln in f}


def _disk_files_containing(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if any(n in data for n in needles):
                hits.append(str(p))
    return hits


def _pod(node: str, image: str) -> dict[str, Any]:
    cmd = (
        'for d in /sec /tok /mem; do echo "$d $(stat -f -c %T $d)"; done; '
        "grep -E ' /(sec|tok|mem) ' /proc/self/mountinfo | awk '{print \"MNT\", $5, $9}'; sleep 3600"
    )
    spec = pod_spec(node, cmd, image, restart="Always")
    spec["volumes"] = [
        {"name": "sec", "secret": {"secretName": "db"}},
        {
            "name": "tok",
            "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}]},
        },
        {"name": "mem", "emptyDir": {"medium": "Memory", "sizeLimit": "4Mi"}},
    ]
    spec["containers"][0]["volumeMounts"] = [
        {"name": "sec", "mountPath": "/sec", "readOnly": True},
        {"name": "tok", "mountPath": "/tok", "readOnly": True},
        {"name": "mem", "mountPath": "/mem"},
    ]
    return spec


@pytest.mark.reliability(
    fault="pods mount a Secret, a service-account token and emptyDir{Memory}; one is deleted while "
    "warmlet is down",
    checked="every such volume is on tmpfs (host statfs + mountinfo, and inside the container), "
    "0 secret/token bytes under the disk volumes dir, gone after deletion and after a restart",
)
async def test_secrets_and_tokens_only_on_tmpfs(e2e: E2E, reliability: Any) -> None:
    cfg = e2e.config()
    cfg.pods.memory_volumes_dir = None  # production layout: a tmpfs mount per volume
    disk = Path(cfg.pods.volumes_dir)
    mem_root = memory_root(disk, None)
    node = await e2e.start(cfg)
    name = cfg.node.name
    ns = await e2e.namespace("secrets")
    await e2e.client.post(
        f"/api/v1/namespaces/{ns}/secrets",
        {"metadata": {"name": "db"}, "data": {"pw": base64.b64encode(SECRET.encode()).decode()}},
    )
    pods = {}
    for pod_name in ("one", "two"):
        pods[pod_name] = await e2e.client.post(
            f"/api/v1/namespaces/{ns}/pods", {"metadata": {"name": pod_name}, "spec": _pod(name, e2e.busybox)}
        )

    async def running_log(pod_name: str) -> str | None:
        p = await e2e.pod(ns, pod_name)
        if (p.get("status") or {}).get("phase") != "Running":
            return None
        code, text = await e2e.pod_log(ns, pod_name)
        return text if code == 200 and "MNT" in text else None

    logs = {n: await wait_for(lambda n=n: running_log(n), 180, 0.5, f"pod {n} running") for n in pods}
    checked = 0
    assert str(mem_root) in _mount_points() and is_memory_backed(mem_root), "memory root not a tmpfs mount"
    for pod_name, pod in pods.items():
        uid = pod["metadata"]["uid"]
        vols = mem_root / uid / "volumes"
        sec = vols / "kubernetes.io~secret" / "sec"
        tok = vols / "kubernetes.io~projected" / "tok"
        mem = vols / "kubernetes.io~empty-dir" / "mem"
        for d in (sec, tok, mem):
            assert is_memory_backed(d), d
            checked += 1
        assert (sec / "pw").read_text() == SECRET
        token = (tok / "token").read_bytes()
        assert token.count(b".") == 2, token[:40]  # a JWT from the TokenRequest
        # inside the container: tmpfs at the three mount points
        text = logs[pod_name]
        for d in ("/sec", "/tok", "/mem"):
            assert f"{d} tmpfs" in text, text
        # nothing of them on disk
        hits = _disk_files_containing(disk, [SECRET.encode(), token])
        assert not hits, hits
        assert not (disk / uid / "volumes" / "kubernetes.io~secret").exists()

    # Deleted normally: unmounted and removed.
    one = pods["one"]["metadata"]["uid"]
    await e2e.client.delete(f"/api/v1/namespaces/{ns}/pods/one")

    async def one_gone() -> bool:
        try:
            await e2e.pod(ns, "one")
            return False
        except Exception:
            return not (mem_root / one).exists()

    await wait_for(one_gone, 120, 0.5, "pod one and its tmpfs volumes gone")

    # Deleted while warmlet is down: cleaned at the next start.
    two = pods["two"]["metadata"]["uid"]
    await e2e.stop(node)
    await e2e.client.delete(f"/api/v1/namespaces/{ns}/pods/two", {"gracePeriodSeconds": 0})
    assert (mem_root / two).exists(), "the volumes stay while warmlet is down (its containers run)"
    await e2e.start(cfg)

    async def two_gone() -> bool:
        return not (mem_root / two).exists()

    await wait_for(two_gone, 120, 0.5, "pod two's tmpfs volumes removed at start")
    assert not (disk / two).exists()
    reliability.detail(
        f"{checked} memory-backed volumes of 2 pods, all on warmlet's tmpfs; 0 secret/token bytes on disk; "
        "removed after deletion and after a restart with an orphan"
    )
