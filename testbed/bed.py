"""The one-machine test bed: control plane + containerd + registry + images, up and down as one.

A *slot* is one isolated instance (own state dir, ports, CNI bridge and subnet), claimed with
an exclusive file lock so that the CLI's long-running bed (slot 0) and any number of test
sessions (slots 1..9) coexist. Starting a slot first kills whatever a crashed previous owner
of the slot left behind, so a test bed never accumulates stray processes or mounts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from testbed import images as images_mod
from testbed.certs import PKI, CertPair, kubeconfig
from testbed.containerd import Containerd
from testbed.controlplane import ControlPlane
from testbed.registry import PrivateRegistry, Registry
from testbed.util import REPO_ROOT, ProcessSet, bin_dir, cache_dir, kv, state_root

log = logging.getLogger("testbed.bed")

CLI_SLOT = 0
TEST_SLOTS = range(1, 10)
DEFAULT_NODE = os.environ.get("WARMLET_NODE_NAME", "warmlet-node")


def info_dir() -> Path:
    """Where the CLI bed publishes its env file and JSON description."""
    return cache_dir() / "testbed"


def ensure_cluster_bins() -> Path:
    """Build (once, cached) the pinned Kubernetes binaries with the repo's script."""
    bins = bin_dir()
    need = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"]
    if not all((bins / b).exists() for b in need):
        log.info(
            kv(
                "building cluster binaries with scripts/build-cluster-bins.sh",
                dir=bins,
                note="first time only, about 10-15 min on 2 cores; it prints its progress and log paths",
            )
        )
        subprocess.run(["bash", str(REPO_ROOT / "scripts" / "build-cluster-bins.sh")], check=True)
    return bins


@dataclass(frozen=True)
class PrivateImages:
    """The bed's private registry (HTTPS with the bed's CA, htpasswd) and its private busybox."""

    address: str = ""
    image: str = ""  # a copy of busybox only these credentials can pull
    username: str = ""
    password: str = ""
    ca_cert: str = ""


@dataclass
class TestBedInfo:
    """Everything a client of a running test bed needs; JSON-serialisable."""

    slot: int
    state_dir: str
    apiserver_url: str
    admin_kubeconfig: str
    warmlet_kubeconfig: str
    node_name: str
    ca_cert: str
    client_ca_cert: str
    client_ca_key: str
    kubelet_serving_cert: str
    kubelet_serving_key: str
    containerd_socket: str
    registry: str
    images: dict[str, str]
    pod_subnet: str
    cni_bridge: str
    bin_dir: str
    pki_dir: str
    pid: int = field(default_factory=os.getpid)
    private: dict[str, str] = field(default_factory=dict)  # PrivateImages as a dict

    def env(self) -> dict[str, str]:
        """Environment variables describing the bed (the CLI's env file)."""
        return {
            "KUBECONFIG": self.admin_kubeconfig,
            "WARMLET_KUBECONFIG": self.warmlet_kubeconfig,
            "WARMLET_NODE_NAME": self.node_name,
            "WARMLET_APISERVER": self.apiserver_url,
            "WARMLET_CA": self.ca_cert,
            "WARMLET_CLIENT_CA": self.client_ca_cert,
            "WARMLET_TLS_CERT": self.kubelet_serving_cert,
            "WARMLET_TLS_KEY": self.kubelet_serving_key,
            "WARMLET_CONTAINERD_SOCK": self.containerd_socket,
            "WARMLET_CRI_ENDPOINT": f"unix://{self.containerd_socket}",
            "WARMLET_REGISTRY": self.registry,
            "WARMLET_IMAGE_PAUSE": self.images["pause"],
            "WARMLET_IMAGE_BUSYBOX": self.images["busybox"],
            "WARMLET_IMAGE_FAT": self.images["fat"],
            "WARMLET_TESTBED_STATE": self.state_dir,
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }

    def write(self, directory: Path) -> None:
        """Write ``testbed.json`` and a shell-sourceable ``env`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "testbed.json").write_text(json.dumps(asdict(self), indent=1))
        lines = [f"export {k}={json.dumps(v)}" for k, v in self.env().items() if k != "PATH"]
        lines.append(f'export PATH="{self.bin_dir}:$PATH"')
        (directory / "env").write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, directory: Path | None = None) -> TestBedInfo:
        """Read the description a running CLI bed wrote."""
        return cls(**json.loads(((directory or info_dir()) / "testbed.json").read_text()))


class TestBed:
    """Brings up registry, containerd and the control plane of one slot (sync context manager).

    Attributes after :meth:`start`: ``slot``, ``state_dir``, ``apiserver_url``,
    ``admin_kubeconfig``, ``warmlet_kubeconfig``, ``node_name``, ``ca_cert``, ``client_ca_cert``,
    ``kubelet_serving_cert``/``kubelet_serving_key``, ``containerd_socket``, ``registry``,
    ``images`` (``pause``/``busybox``/``fat`` → reference), ``pod_subnet``, ``cni_bridge``,
    ``pki``, ``startup_seconds``.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        slot: int | None = None,
        node_name: str = DEFAULT_NODE,
        fat_mb: int | None = None,
        verify_kubelet_serving: bool = False,
        keep_state: bool | None = None,
    ) -> None:
        self.requested_slot = slot
        self.node_name = node_name
        self.fat_mb = fat_mb if fat_mb is not None else int(os.environ.get("WARMLET_FAT_MB", "100"))
        self.verify_kubelet_serving = verify_kubelet_serving
        self.keep_state = (
            keep_state if keep_state is not None else os.environ.get("WARMLET_TESTBED_KEEP") == "1"
        )
        self._lock: IO[str] | None = None
        self._owned = True
        self.slot = -1
        self.started = False
        self.startup_seconds = 0.0

    # ------------------------------------------------------------------ slots
    def _claim_slot(self) -> None:
        root = state_root()
        root.mkdir(parents=True, exist_ok=True)
        candidates = [self.requested_slot] if self.requested_slot is not None else list(TEST_SLOTS)
        for s in candidates:
            f = open(root / f"slot-{s}.lock", "w")  # noqa: SIM115 - held for the bed's lifetime
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            self._lock, self.slot = f, s
            self.state_dir = root / f"slot-{s}"
            return
        raise RuntimeError(f"no free test-bed slot among {candidates} (locks under {root})")

    def _release_slot(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _clean_slot(self) -> None:
        """Kill and unmount what a previous owner of this slot left, then wipe its state."""
        ProcessSet.kill_stale(self.state_dir)
        leftover = Containerd(self.state_dir, ProcessSet(self.state_dir), self.slot, "", "")
        leftover.kill_shims()
        leftover.remove_leftovers()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> TestBed:
        """Bring everything up; on any failure tear down what started and re-raise."""
        t0 = time.monotonic()
        ensure_cluster_bins()
        layouts = images_mod.build_all(self.fat_mb)
        self._claim_slot()
        try:
            self._start(layouts)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = round(time.monotonic() - t0, 2)
        log.info(
            kv(
                "test bed up",
                slot=self.slot,
                seconds=self.startup_seconds,
                api=self.apiserver_url,
                containerd=self.containerd_socket,
                registry=self.registry,
            )
        )
        return self

    def _start(self, layouts: dict[str, images_mod.ImageLayout]) -> None:
        self._clean_slot()
        self.procs = ProcessSet(self.state_dir)
        with _pki_lock():
            self.pki = PKI(cache_dir() / "pki")
            node_cert = self.pki.issue_node_client_cert(self.node_name)
            serving = self.pki.issue_kubelet_serving_cert(self.node_name)
            private_tls = self.pki.issue_serving_cert(
                "registry-private", "warmlet-private-registry", ["127.0.0.1", "localhost"]
            )
        self.registry_ = Registry(
            self.state_dir, self.procs, preferred_port=5000 if self.slot == CLI_SLOT else None
        )
        self.registry = self.registry_.address
        self.images = {n: f"{self.registry}/warmlet/{n}:{images_mod.TAG}" for n in layouts}
        self.private_registry_ = PrivateRegistry(self.state_dir, self.procs, private_tls, self.pki.ca.cert)
        self.private = PrivateImages(
            address=self.private_registry_.address,
            image=f"{self.private_registry_.address}/private/busybox:{images_mod.TAG}",
            username=self.private_registry_.username,
            password=self.private_registry_.password,
            ca_cert=str(self.pki.ca.cert),
        )
        self.containerd = Containerd(
            self.state_dir, self.procs, self.slot, self.images["pause"], self.registry
        )
        self.containerd.trust_registry(self.private.address, self.pki.ca.cert)
        self.cp = ControlPlane(self.state_dir, self.pki, self.procs, self.verify_kubelet_serving)
        self.started = True

        # spawn everything from this thread (death signal), overlap the slow waits
        self.cp.spawn_etcd()
        self.registry_.spawn()
        self.private_registry_.spawn()
        self.containerd.spawn()
        self.cp.wait_etcd()
        self.cp.spawn_apiserver()
        self.registry_.wait()
        for n, layout in layouts.items():
            self.registry_.push(layout, f"warmlet/{n}")
        self.private_registry_.wait()
        self.private_registry_.push(layouts["busybox"], "private/busybox")
        self.containerd.wait()
        for n in ("pause", "busybox"):
            self.containerd.import_image(layouts[n], self.images[n])
        self.cp.wait_apiserver()
        self.cp.spawn_controllers()
        self.cp.wait_controllers()

        self.apiserver_url = self.cp.apiserver_url
        self.admin_kubeconfig = self.cp.admin_kubeconfig
        self.warmlet_kubeconfig = kubeconfig(
            self.state_dir / "warmlet.kubeconfig",
            self.apiserver_url,
            self.pki.ca.cert,
            node_cert,
            f"system:node:{self.node_name}",
        )
        self.ca_cert = self.pki.ca.cert
        self.client_ca_cert = self.pki.client_ca.cert
        self.kubelet_serving_cert, self.kubelet_serving_key = serving.cert, serving.key
        self.containerd_socket = self.containerd.socket
        self.pod_subnet = self.containerd.subnet
        self.cni_bridge = self.containerd.bridge

    def stop(self) -> None:
        """Stop everything (TERM, then KILL), clean mounts/bridge, remove state, free the slot."""
        if not self._owned:
            return
        if self.started:
            with contextlib.suppress(Exception):
                self.containerd.stop()
            with contextlib.suppress(Exception):
                self.procs.stop()
            self.started = False
        if self._lock is not None:
            if not self.keep_state:
                shutil.rmtree(self.state_dir, ignore_errors=True)
            self._release_slot()
            log.info(kv("test bed down", slot=self.slot))

    def __enter__(self) -> TestBed:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    def info(self) -> TestBedInfo:
        """The serialisable description of this running bed."""
        return TestBedInfo(
            slot=self.slot,
            state_dir=str(self.state_dir),
            apiserver_url=self.apiserver_url,
            admin_kubeconfig=str(self.admin_kubeconfig),
            warmlet_kubeconfig=str(self.warmlet_kubeconfig),
            node_name=self.node_name,
            ca_cert=str(self.ca_cert),
            client_ca_cert=str(self.client_ca_cert),
            client_ca_key=str(self.pki.client_ca.key),
            kubelet_serving_cert=str(self.kubelet_serving_cert),
            kubelet_serving_key=str(self.kubelet_serving_key),
            containerd_socket=str(self.containerd_socket),
            registry=self.registry,
            images=dict(self.images),
            pod_subnet=self.pod_subnet,
            cni_bridge=self.cni_bridge,
            bin_dir=str(bin_dir()),
            pki_dir=str(self.pki.dir),
            private=asdict(self.private),
        )

    @classmethod
    def attach(cls, info: TestBedInfo) -> TestBed:
        """A handle on a bed someone else runs (the CLI's); :meth:`stop` leaves it running."""
        bed = cls(slot=info.slot, node_name=info.node_name)
        bed._owned = False
        bed.slot, bed.state_dir = info.slot, Path(info.state_dir)
        bed.pki = PKI(Path(info.pki_dir))
        bed.apiserver_url = info.apiserver_url
        bed.admin_kubeconfig, bed.warmlet_kubeconfig = (
            Path(info.admin_kubeconfig),
            Path(info.warmlet_kubeconfig),
        )
        bed.ca_cert, bed.client_ca_cert = Path(info.ca_cert), Path(info.client_ca_cert)
        bed.kubelet_serving_cert, bed.kubelet_serving_key = (
            Path(info.kubelet_serving_cert),
            Path(info.kubelet_serving_key),
        )
        bed.containerd_socket, bed.registry, bed.images = (
            Path(info.containerd_socket),
            info.registry,
            info.images,
        )
        bed.pod_subnet, bed.cni_bridge = info.pod_subnet, info.cni_bridge
        bed.private = PrivateImages(**info.private)
        return bed

    def issue_client_cert(self, cn: str, orgs: tuple[str, ...] | list[str] = ()) -> CertPair:
        """A client cert of the cluster's client CA for user ``cn`` in groups ``orgs``."""
        with _pki_lock():
            return self.pki.issue_client_cert(cn, orgs)

    def kubeconfig_for(self, cn: str, orgs: tuple[str, ...] | list[str] = ()) -> Path:
        """A kubeconfig authenticating as ``cn``/``orgs`` (e.g. another node)."""
        pair = self.issue_client_cert(cn, orgs)
        return kubeconfig(
            self.state_dir / f"kubeconfig-{pair.cert.stem}", self.apiserver_url, self.ca_cert, pair, cn
        )

    def kubeconfig_for_node(self, node: str) -> Path:
        """A kubelet kubeconfig for ``node`` (``system:node:<node>``, group ``system:nodes``)."""
        return self.kubeconfig_for(f"system:node:{node}", ("system:nodes",))

    def kubectl(self, *args: str, timeout: float = 60) -> str:
        """kubectl as cluster admin; returns stdout, raises with stderr."""
        r = subprocess.run(
            [str(bin_dir() / "kubectl"), f"--kubeconfig={self.admin_kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {r.stderr}")
        return r.stdout

    def ctr(self, *args: str, timeout: float = 120) -> str:
        """``ctr`` against the bed's containerd, namespace k8s.io."""
        from testbed.util import run

        return run(
            ["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args], timeout=timeout
        )

    def log_paths(self) -> dict[str, Path]:
        """Component name → log file."""
        return {p.stem: p for p in sorted((self.state_dir / "logs").glob("*.log"))}

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view (for status output)."""
        return asdict(self.info())


@contextlib.contextmanager
def _pki_lock() -> Any:
    """Serialise PKI creation between concurrent sessions (they share the cached PKI)."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".pki.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
