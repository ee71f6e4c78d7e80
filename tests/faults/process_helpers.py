"""Helpers of the process-fault tests: a warmlet run as a real subprocess (``python -m
provider.cli run``), pod builders, and what containerd and the logs say about each pod."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_helpers import E2E, wait_for

from provider.kubeclient import ApiError
from sandbox.cri import mapping as m
from sandbox.cri.client import CriClient
from testbed.util import _pdeathsig

ROOT = Path(__file__).resolve().parents[2]
JSON = dict[str, Any]
RUN_MARK = "warmlet-run"  # every container prints it once: a second line means a second run
LOOP = "sleep 100000"


class Warmlet:
    """One warmlet subprocess configuration; ``spawn()`` starts a process, all logging to one file."""

    def __init__(self, e2e: E2E, name: str, workdir: Path, **extra: Any) -> None:
        self.e2e = e2e
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        e2e.instances.add(name)  # the fixture removes our containers/sandboxes and the Node
        self.log_dir = workdir / "logs"
        self.state_dir = workdir / "state"
        cfg: JSON = {
            "kubeconfig": str(e2e.kubeconfig),
            "backend": "cri",
            "log_dir": str(self.log_dir),
            "state_dir": str(self.state_dir),
            "node": {"name": name, "lease_renew_interval_seconds": 2.0},
            "pods": {"volumes_dir": str(self.state_dir / "pods")},
            "cri": {"runtime_endpoint": e2e.cri_endpoint, "poll_interval_seconds": 0.2},
            "pool": {"cron_prewarm": False, "max_per_workload": 4},
            "server": {
                "port": 0,
                "address": "127.0.0.1",
                "authorization_mode": "AlwaysAllow",
                "client_ca_file": str(e2e.testbed.client_ca_cert),
                "cert_dir": str(self.state_dir / "pki"),
            },
        }
        for section, values in extra.items():
            cfg.setdefault(section, {}).update(values)
        self.cfg = cfg
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, tag: str = "", **overrides: Any) -> subprocess.Popen[bytes]:
        cfg = json.loads(json.dumps(self.cfg))
        for section, values in overrides.items():
            cfg.setdefault(section, {}).update(values)
        conf = self.workdir / f"warmlet{tag}.yaml"
        conf.write_text(yaml.safe_dump(cfg))
        with open(self.workdir / f"warmlet{tag}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "provider.cli", "run", "--config", str(conf)],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                preexec_fn=_pdeathsig,  # dies with the test process, never orphaned
            )
        self.procs.append(proc)
        return proc

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("warmlet*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)


@pytest.fixture
def warmlets() -> Iterator[list[Warmlet]]:
    made: list[Warmlet] = []
    yield made
    for w in made:
        w.stop_all()


async def node_ready(e2e: E2E, node: str) -> JSON:
    try:
        return await e2e.ready_condition(node)
    except ApiError:
        return {}


async def wait_ready(e2e: E2E, node: str, within: float = 180) -> None:
    async def ready() -> bool:
        return (await node_ready(e2e, node)).get("status") == "True"

    await wait_for(ready, within, 0.5, f"node {node} Ready")


async def lease_holder(e2e: E2E, name: str, namespace: str = "kube-node-lease") -> str:
    try:
        lease = await e2e.client.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")
    except ApiError:
        return ""
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def pod(name: str, node: str, command: str, image: str, owner: JSON | None = None) -> JSON:
    meta: JSON = {"name": name, "labels": {"fault": "process"}}
    if owner is not None:
        meta["ownerReferences"] = [{**owner, "controller": True}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": image, "command": ["sh", "-c", command]}],
        },
    }


async def create_pods(e2e: E2E, ns: str, pods: list[JSON], parallel: int = 16) -> None:
    sem = asyncio.Semaphore(parallel)

    async def one(p: JSON) -> None:
        async with sem:
            for attempt in range(5):
                try:
                    await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", p)
                    return
                except ApiError as e:
                    if e.conflict:
                        return
                    if attempt == 4:
                        raise
                except (OSError, TimeoutError):
                    if attempt == 4:
                        raise
                await asyncio.sleep(1)

    await asyncio.gather(*(one(p) for p in pods))


async def runtime(e2e: E2E, instance: str) -> tuple[list[Any], list[Any]]:
    """(sandboxes, containers) of one warmlet instance in containerd, all states."""
    c = CriClient(e2e.cri_endpoint)
    try:
        sel = m.managed_selector(instance)
        return list(await c.list_pod_sandbox(labels=sel)), list(await c.list_containers(labels=sel))
    finally:
        await c.close()


def phase(p: JSON) -> str:
    return str((p.get("status") or {}).get("phase") or "Pending")


def main_status(p: JSON) -> JSON:
    for cs in (p.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == "main":
            return dict(cs)
    return {}


def run_marks(log_dir: Path, p: JSON) -> int:
    """How many times the pod's container printed RUN_MARK, over every log file of every attempt."""
    meta = p["metadata"]
    d = log_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    n = 0
    for f in d.glob("*/*.log*"):
        n += sum(RUN_MARK in line for line in f.read_text(errors="replace").splitlines())
    return n


def start_cut_short(p: JSON) -> bool:
    """StartError from a StartContainer cancelled (warmlet killed) once containerd's task existed:
    the process may have run. warmlet's CRI relay exists so that this never happens: the call
    finishes in the runtime although its caller is dead."""
    term = (main_status(p).get("state") or {}).get("terminated") or {}
    msg = str(term.get("message") or "")
    return (
        term.get("reason") == "StartError"
        and "failed to start containerd task" in msg
        and "context canceled" in msg
    )


def tag_image(e2e: E2E, tag: str) -> str:
    """A new tag of the bed's busybox in the registry: an image containerd does not have yet."""
    src = e2e.busybox
    dst = src.rsplit(":", 1)[0] + f":{tag}"
    subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{src}",
            f"docker://{dst}",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return dst
