"""Kubelet baseline: the cold / image-cached pod starts of a real kubelet, next to warmlet's.

A real kubelet of the pinned release (v1.36.3, built opt-in: ``scripts/build-cluster-bins.sh
kubelet``) joins the test bed's control plane as its own Node with its own private containerd
(a separate instance: kubelet's garbage collection must never see warmlet's sandboxes). N pods
(default 20), one at a time, pinned by spec.nodeName: at "cold" the image is removed from that
containerd before each pod, at "image_cached" it is present. Latency: client-side POST → first
watch event with phase Running (bench.harness.PodClock), as bench/cold_vs_warm.py measures
warmlet; ratios against bench/results/cold-vs-warm.json when it exists.

This machine is cgroup v1 hybrid with swap possibly on, no kube-proxy: the kubelet runs with
``failCgroupV1: false``, ``failSwapOn: false``, cgroupfs under its own cgroupRoot, x509 authn
with AlwaysAllow authz, and no Services (Running latency only). Kernel settings kubelet changes
(vm.overcommit_memory, kernel.panic*, ...) are restored afterwards. If the kubelet cannot run
here, the result says why (its own error) with ``ran: false`` and the scenario still succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.common import RESULTS_DIR, plot_cdf, ratio, summarize_ms, write_result
from bench.harness import (
    HOLD_COMMAND,
    REPO_ROOT,
    Bed,
    bed_session,
    delete_namespace,
    free_port,
    owned_pod,
    wait_node_ready,
)
from bench.podwatch import PodClock
from provider.kubeclient import ApiError, KubeClient
from testbed.testing import create_namespace

log = logging.getLogger("bench.kubelet_baseline")
JSON = dict[str, Any]
SCENARIO = "kubelet-baseline"
K8S_VERSION = "v1.36.3"
SLOT = 19  # the private containerd's bridge wltb19 / subnet 10.99.0.0/16 (test slots are 0..9)
# Kernel settings kubelet sets when protectKernelDefaults is false; saved and restored.
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)


def kubelet_config(
    endpoint: str, client_ca: str, port: int, healthz: int, cgroup_root: str, address: str = "127.0.0.1"
) -> JSON:
    """A KubeletConfiguration that runs on this machine (cgroup v1 hybrid, swap, no kube-proxy),
    serving its API on ``address``."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "failSwapOn": False,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "containerRuntimeEndpoint": endpoint,
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": client_ca},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": ["10.0.0.10"],
        "clusterDomain": "cluster.local",
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "enforceNodeAllocatable": [],
        "localStorageCapacityIsolation": False,
        "registerNode": True,
        "podPidsLimit": -1,
    }


_ERR_RE = re.compile(r'^[EF]\d{4} .*|.*(?:err(?:or)?="|failed to run Kubelet|command failed).*', re.M)


def kubelet_error(log_text: str, limit: int = 2000) -> str:
    """Why kubelet stopped: its fatal line ("failed to run Kubelet"/"command failed") if any, else
    the last error lines it printed (E/F klog lines)."""
    lines = [m.group(0).strip() for m in _ERR_RE.finditer(log_text)]
    fatal = [ln for ln in lines if "failed to run Kubelet" in ln or "command failed" in ln]
    picked = fatal[-1:] or lines[-3:]
    return "\n".join(picked)[-limit:] if picked else log_text.strip()[-limit:]


def read_tunables() -> dict[str, str]:
    out = {}
    for t in KERNEL_TUNABLES:
        with contextlib.suppress(OSError):
            out[t] = Path("/proc/sys", t).read_text().strip()
    return out


def restore_tunables(saved: dict[str, str]) -> None:
    for t, v in saved.items():
        with contextlib.suppress(OSError):
            if Path("/proc/sys", t).read_text().strip() != v:
                Path("/proc/sys", t).write_text(v)


def warmlet_result(path: Path = RESULTS_DIR / "cold-vs-warm.json") -> JSON:
    """bench/cold_vs_warm.py's result ({} when it has not run)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def compare(kubelet: JSON, warmlet: JSON | None) -> JSON:
    """kubelet over warmlet p50 per level, and kubelet's image-cached start over warmlet's warm one."""
    if not warmlet:
        return {}
    out: JSON = {}
    for level in ("cold", "image_cached"):
        k, w = kubelet.get(level), warmlet.get(level)
        if k and w:
            out[f"{level}_kubelet_over_warmlet_p50"] = ratio(k["p50_ms"], w["p50_ms"])
            out[f"{level}_kubelet_over_warmlet_p99"] = ratio(k["p99_ms"], w["p99_ms"])
    if kubelet.get("image_cached") and warmlet.get("warm"):
        out["kubelet_image_cached_over_warmlet_warm_p50"] = ratio(
            kubelet["image_cached"]["p50_ms"], warmlet["warm"]["p50_ms"]
        )
    return out


class KubeletNode:
    """A private containerd + kubelet joined to the test bed as Node ``name`` (sync start/stop)."""

    def __init__(self, bed: Bed, name: str, workdir: Path) -> None:
        from testbed.containerd import Containerd
        from testbed.util import ProcessSet

        self.bed, self.name, self.dir = bed, name, workdir
        self.procs = ProcessSet(workdir)
        self.containerd = Containerd(workdir, self.procs, SLOT, bed.images["pause"], bed.registry)
        self.endpoint = f"unix://{self.containerd.socket}"
        self.cgroup_root = f"/warmlet-kubelet-{name}"
        # kubelet refuses a loopback node IP ("nodeIP can't be loopback address") and then reports
        # no address, so the API server could not reach it for exec/attach/port-forward/logs: it
        # gets the gateway address of its own containerd's CNI bridge, an interface of this bed.
        self.node_ip = ""
        self.api_port = 0

    @property
    def api_url(self) -> str:
        """The kubelet API's base URL (its serving address and port)."""
        return f"https://{self.node_ip}:{self.api_port}"

    def start_containerd(self) -> None:
        from testbed import images as images_mod

        self.containerd.remove_leftovers()
        self.containerd.spawn()
        self.containerd.wait()
        layouts = images_mod.build_all()
        self.containerd.import_image(layouts["pause"], self.bed.images["pause"])

    def make_cgroup_root(self) -> None:
        """kubelet wants its cgroupRoot to exist in every hierarchy (cpuset: with cpus and mems)."""
        for h in Path("/sys/fs/cgroup").iterdir():
            if not h.is_dir() or h.is_symlink():
                continue
            d = h / self.cgroup_root.lstrip("/")
            with contextlib.suppress(OSError):
                d.mkdir(exist_ok=True)
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if (h / f).exists():
                        (d / f).write_text((h / f).read_text())

    def start_kubelet(self, binary: Path, extra: JSON | None = None) -> None:
        """Start the kubelet; ``extra`` overrides fields of its KubeletConfiguration."""
        from testbed.containerd import ensure_bridge

        self.make_cgroup_root()
        tb = self.bed.testbed
        self.node_ip = ensure_bridge(self.containerd.bridge, self.containerd.subnet)
        self.api_port = free_port()
        cfg = kubelet_config(
            self.endpoint, str(tb.client_ca_cert), self.api_port, free_port(), self.cgroup_root, self.node_ip
        )
        cfg.update(extra or {})
        cfg_path = self.dir / "kubelet.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        kc = tb.kubeconfig_for_node(self.name)
        self.procs.spawn(
            "kubelet",
            [
                str(binary),
                f"--config={cfg_path}",
                f"--kubeconfig={kc}",
                f"--root-dir={self.dir / 'kubelet'}",
                f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                "--v=1",
            ],
        )

    def log_text(self) -> str:
        p = self.procs.logs.get("kubelet")
        return p.read_text(errors="replace") if p and p.exists() else ""

    def alive(self) -> bool:
        p = self.procs.procs.get("kubelet")
        return p is not None and p.poll() is None

    def stop(self) -> None:
        self.procs.stop(["kubelet"], grace=10)
        with contextlib.suppress(Exception):
            self.containerd.stop()
        # kubelet's pod cgroups under its own root (cgroup v1 hierarchies + the unified mount)
        for root in Path("/sys/fs/cgroup").iterdir():
            d = root / self.cgroup_root.lstrip("/")
            if d.is_dir():
                for sub in sorted(d.rglob("*"), key=lambda p: -len(p.parts)):
                    if sub.is_dir():
                        with contextlib.suppress(OSError):
                            sub.rmdir()
                with contextlib.suppress(OSError):
                    d.rmdir()
        subprocess.run(["umount", "-R", str(self.dir / "kubelet")], capture_output=True)


async def remove_image(endpoint: str, image: str) -> None:
    from sandbox.cri.client import CriClient

    cri = CriClient(endpoint)
    try:
        with contextlib.suppress(Exception):
            await cri.remove_image(image)
    finally:
        await cri.close()


async def measure_level(
    client: KubeClient, ns: str, node: KubeletNode, image: str, level: str, n: int
) -> list[float]:
    """n pods one at a time: POST → Running seconds; cold removes the image before each pod."""
    out: list[float] = []
    async with PodClock(client, ns) as clock:
        for i in range(n):
            if level == "cold":
                await remove_image(node.endpoint, image)
            name = f"kb-{level.replace('_', '-')}-{i}"
            pod = owned_pod(name, node.name, image, command=HOLD_COMMAND, grace_seconds=1)
            pod["spec"]["nodeName"] = node.name
            pod["spec"].pop("nodeSelector", None)
            t = await clock.create(pod)
            await clock.wait(name, "running", 180)
            if t.start_seconds is not None:
                out.append(t.start_seconds)
            await clock.delete_and_wait_gone(name, 120)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--pods", type=int, default=None, help="pods per level (default 20; --quick 3)")
    parser.add_argument("--image", default="fat", help="test-bed image name (pause, busybox, fat)")
    parser.add_argument("--build", action="store_true", help="build the kubelet if it is missing")


def not_ran(reason: str, **extra: Any) -> JSON:
    result: JSON = {"ran": False, "reason": reason, "kubelet_version": K8S_VERSION, **extra}
    write_result(SCENARIO, result)
    return {"scenario": SCENARIO, **result}


def no_binary(binary: Path) -> str:
    return f"no kubelet binary at {binary}: build it with scripts/build-cluster-bins.sh kubelet"


class KubeletUnavailable(Exception):
    """The kubelet could not be run here (no binary, no test bed, it exited, never Ready)."""


def kubelet_binary() -> Path:
    from testbed.util import bin_dir

    return bin_dir() / "kubelet"


@contextlib.asynccontextmanager
async def running_kubelet(
    bed: Bed, binary: Path | None = None, name: str = "", extra: JSON | None = None
) -> AsyncIterator[KubeletNode]:
    """A real kubelet (own containerd) joined to ``bed`` as a Ready Node for the block; stopped,
    its Node deleted and kernel settings restored afterwards (``extra``: KubeletConfiguration
    overrides). Raises :class:`KubeletUnavailable`
    with kubelet's own error when it cannot run here."""
    binary = binary or kubelet_binary()
    if not binary.exists():
        raise KubeletUnavailable(
            f"no kubelet binary at {binary}: build it with scripts/build-cluster-bins.sh kubelet"
        )
    if bed.testbed is None or "pause" not in bed.images:
        raise KubeletUnavailable("needs the test bed (node certificates, pause image, registry)")
    name = name or f"kubelet-{int(time.time()) % 100000}"
    workdir = Path(tempfile.mkdtemp(prefix="kubelet-baseline-"))
    node = KubeletNode(bed, name, workdir)
    saved = read_tunables()
    client = await KubeClient.from_kubeconfig(bed.kubeconfig)
    try:
        await asyncio.to_thread(node.start_containerd)
        node.start_kubelet(binary, extra)
        ready = asyncio.create_task(wait_node_ready(client, name, 120))
        while not ready.done():
            if not node.alive():
                ready.cancel()
                raise KubeletUnavailable(f"kubelet exited: {kubelet_error(node.log_text())}")
            await asyncio.wait({ready}, timeout=0.5)
        try:
            ready.result()
        except TimeoutError as e:
            raise KubeletUnavailable(f"node not Ready after 120 s: {kubelet_error(node.log_text())}") from e
        yield node
    finally:
        await client.close()
        await asyncio.to_thread(node.stop)
        restore_tunables(saved)
        admin = await KubeClient.from_kubeconfig(bed.kubeconfig)
        with contextlib.suppress(ApiError):
            await admin.delete(f"/api/v1/nodes/{name}")
        await admin.close()
        for sub in ("kubelet", "containerd"):  # keep logs/ for a look afterwards
            shutil.rmtree(workdir / sub, ignore_errors=True)


async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    n = args.pods or (3 if quick else 20)
    binary = kubelet_binary()
    if not binary.exists() and args.build:
        await asyncio.to_thread(
            subprocess.run,
            ["bash", str(REPO_ROOT / "scripts" / "build-cluster-bins.sh"), "kubelet"],
            check=False,
        )
    if not binary.exists():
        return not_ran(no_binary(binary))  # before starting a test bed for nothing
    samples: dict[str, list[float]] = {}
    image = args.image
    try:
        async with bed_session(getattr(args, "kubeconfig", None)) as bed:
            image = bed.images.get(args.image, args.image)
            async with running_kubelet(bed, binary) as node:
                client = await KubeClient.from_kubeconfig(bed.kubeconfig)
                try:
                    ns = await create_namespace(client, "kubelet-baseline")
                    try:
                        for level in ("cold", "image_cached"):
                            samples[level] = await measure_level(client, ns, node, image, level, n)
                    finally:
                        await delete_namespace(client, ns, 120)
                finally:
                    await client.close()
    except KubeletUnavailable as e:
        return not_ran(str(e))
    kubelet = {lv: summarize_ms(v) for lv, v in samples.items()}
    cvw = warmlet_result()
    warmlet = cvw.get("levels") or None
    result: JSON = {
        "ran": True,
        "quick": quick,
        "kubelet_version": K8S_VERSION,
        "image": image,
        "latency": "client-side POST -> first watch event with phase Running, one pod at a time",
        "levels": kubelet,
        "warmlet_cold_vs_warm": {"levels": warmlet, "measured_at": cvw.get("measured_at"), "n": cvw.get("n")},
        "ratios": compare(kubelet, warmlet),
        "samples_ms": {lv: [round(s * 1000, 1) for s in v] for lv, v in samples.items()},
        "setup": "own containerd (slot 19), cgroupfs, failCgroupV1=false, failSwapOn=false, x509+AlwaysAllow",
    }
    write_result(SCENARIO, result)
    series: dict[str, Sequence[float]] = {f"kubelet {lv}": [s * 1000 for s in v] for lv, v in samples.items()}
    for lv, v in (cvw.get("samples_ms") or {}).items():
        if lv in ("cold", "image_cached", "warm"):
            series[f"warmlet {lv}"] = v
    plot_cdf(series, "real kubelet: POST -> Running", RESULTS_DIR / f"{SCENARIO}.png")
    return {"scenario": SCENARIO, **result}


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    if not result.get("ran"):
        return [("ran", "no"), ("reason", str(result.get("reason"))[:300])]
    rows = [
        (f"kubelet {lv}", f"n={v['n']} p50={v['p50_ms']}ms p99={v['p99_ms']}ms")
        for lv, v in (result.get("levels") or {}).items()
    ]
    rows += [(k, str(v)) for k, v in (result.get("ratios") or {}).items()]
    return rows


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.kubelet_baseline")
