"""A private containerd with its CRI plugin, isolated from any other containerd on the machine.

Own root, state, socket, CNI config/IPAM data, bridge name and pod subnet per slot, so the
test bed can run next to a developer's containerd (or a second test run) without sharing
anything. Config is ``containerd config default`` plus the changes these machines need
(see /work/shared/machine-notes.md): restrict_oom_score_adj, runc, Debian's CNI path.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from testbed.images import ImageLayout
from testbed.util import (
    ProcessSet,
    descendants,
    kill_group,
    kv,
    processes_matching,
    run,
    unmount_under,
)
from testbed.wait import wait_until

log = logging.getLogger("testbed.containerd")

CNI_BIN_DIR = "/usr/lib/cni"
K8S_NAMESPACE = "k8s.io"


def _set(text: str, key: str, value: str, section: str | None = None) -> str:
    """Replace ``key = ...`` (first match, optionally after ``[section]``) in TOML text."""
    start = 0
    if section is not None:
        m = re.search(r"^\s*\[" + re.escape(section) + r"\]\s*$", text, flags=re.M)
        if not m:
            raise ValueError(f"section {section} not in containerd default config")
        start = m.end()
    pat = re.compile(r"^(\s*)" + re.escape(key) + r"\s*=.*$", flags=re.M)
    m = pat.search(text, start)
    if not m:
        raise ValueError(f"key {key} not in containerd default config")
    return text[: m.start()] + f"{m.group(1)}{key} = {value}" + text[m.end() :]


class Containerd:
    """One private containerd instance of a test-bed slot."""

    def __init__(
        self, state_dir: Path, procs: ProcessSet, slot: int, pause_image: str, registry: str
    ) -> None:
        self.dir = state_dir / "containerd"
        self.procs = procs
        self.slot = slot
        self.socket = self.dir / "containerd.sock"
        self.pause_image = pause_image
        self.registry = registry
        self.bridge = f"wltb{slot}"
        self.subnet = f"10.{80 + slot}.0.0/16"
        self.network_name = f"warmlet-testbed-{slot}"
        self.trusted: dict[str, Path] = {}  # HTTPS registry address -> CA certificate

    def trust_registry(self, address: str, ca: Path) -> None:
        """Pull from the HTTPS registry at ``address`` verifying its certificate with ``ca``
        (its ``hosts.toml``, read by containerd on every pull)."""
        self.trusted[address] = ca
        hosts = self.dir / "certs.d" / address / "hosts.toml"
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text(
            f'server = "https://{address}"\n\n[host."https://{address}"]\n'
            f'  capabilities = ["pull", "resolve"]\n  ca = {json.dumps(str(ca))}\n'
        )

    def write_config(self) -> Path:
        """containerd's default config with this slot's paths and the machine's quirks."""
        d = self.dir
        for sub in ("root", "state", "cni/conf", "cni/ipam", "certs.d", "opt"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        hosts = d / "certs.d" / self.registry / "hosts.toml"
        hosts.parent.mkdir(parents=True, exist_ok=True)
        hosts.write_text(
            f'server = "http://{self.registry}"\n\n[host."http://{self.registry}"]\n'
            '  capabilities = ["pull", "resolve"]\n  skip_verify = true\n'
        )
        conflist = {
            "cniVersion": "1.0.0",
            "name": self.network_name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": self.subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(d / "cni" / "ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }
        # containerd's CRI adds the loopback network itself (cni.WithLoNetwork) for every sandbox
        (d / "cni" / "conf" / "10-warmlet-testbed.conflist").write_text(json.dumps(conflist, indent=1))

        text = run(["containerd", "config", "default"])
        text = _set(text, "root", json.dumps(str(d / "root")))
        text = _set(text, "state", json.dumps(str(d / "state")))
        text = _set(text, "address", json.dumps(str(self.socket)), "grpc")
        text = _set(text, "restrict_oom_score_adj", "true")
        text = _set(text, "disable_apparmor", "true")
        text = _set(text, "netns_mounts_under_state_dir", "true")
        text = _set(text, "sandbox_image", json.dumps(self.pause_image))
        text = _set(text, "bin_dir", json.dumps(CNI_BIN_DIR), 'plugins."io.containerd.grpc.v1.cri".cni')
        text = _set(
            text, "conf_dir", json.dumps(str(d / "cni" / "conf")), 'plugins."io.containerd.grpc.v1.cri".cni'
        )
        text = _set(
            text,
            "config_path",
            json.dumps(str(d / "certs.d")),
            'plugins."io.containerd.grpc.v1.cri".registry',
        )
        text = _set(text, "path", json.dumps(str(d / "opt")), 'plugins."io.containerd.internal.v1.opt"')
        path = d / "config.toml"
        path.write_text(text)
        return path

    def spawn(self) -> None:
        """Start containerd on its own socket."""
        cfg = self.write_config()
        self.procs.spawn(
            "containerd",
            [
                "containerd",
                "--config",
                str(cfg),
                "--root",
                str(self.dir / "root"),
                "--state",
                str(self.dir / "state"),
                "--address",
                str(self.socket),
                "--log-level",
                "info",
            ],
        )

    def ctr(self, *args: str, timeout: float = 120) -> str:
        """Run ``ctr`` against this instance in the k8s.io namespace."""
        return run(
            ["ctr", "--address", str(self.socket), "--namespace", K8S_NAMESPACE, *args], timeout=timeout
        )

    def wait(self, timeout: float = 30) -> None:
        """The socket answers and the CRI plugin loaded with status ``ok``."""

        def ok() -> bool:
            out = run(["ctr", "--address", str(self.socket), "plugins", "ls"], timeout=5)
            return any(
                ln.split()[:2] == ["io.containerd.grpc.v1", "cri"] and ln.split()[-1] == "ok"
                for ln in out.splitlines()
            )

        wait_until(
            "containerd",
            ok,
            timeout,
            interval=0.1,
            alive=self.procs.alive("containerd"),
            log_path=self.procs.logs["containerd"],
        )
        log.info(kv("containerd ready", socket=self.socket, subnet=self.subnet, bridge=self.bridge))

    def import_image(self, layout: ImageLayout, full_name: str) -> None:
        """Load an image (unpacked for the overlayfs snapshotter) under ``full_name``."""
        archive = self.dir / f"import-{layout.path.name}.tar"
        layout.archive(archive, full_name)
        try:
            self.ctr("images", "import", "--platform", "linux/amd64", str(archive))
        finally:
            archive.unlink(missing_ok=True)
        log.info(kv("imported", image=full_name))

    # ------------------------------------------------------------------ outage (fault tests)
    def running(self) -> bool:
        p = self.procs.procs.get("containerd")
        return p is not None and p.poll() is None

    def stop_daemon(self, grace: float = 10.0) -> None:
        """Stop only the containerd daemon, as a service restart does: the shims (own process
        groups) and so every sandbox and container keep running. :meth:`start_daemon` resumes."""
        self.procs.stop(["containerd"], grace=grace)

    def start_daemon(self, timeout: float = 60) -> None:
        """Start containerd again on the same config, root and state; it reconnects to the shims."""
        if not self.running():
            self.spawn()
        self.wait(timeout)

    # ------------------------------------------------------------------ teardown
    def _cri_cleanup(self, timeout: float = 20) -> None:
        """Stop and remove every pod sandbox through CRI, so CNI releases IPs/veths properly."""
        try:
            import grpc

            from proto import cri_pb2 as pb
            from proto import cri_pb2_grpc as pbg
        except Exception as e:  # stubs unavailable: the kill path below still cleans up
            log.warning(kv("cri cleanup skipped", error=e))
            return
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"unix://{self.socket}") as ch:
            rt = pbg.RuntimeServiceStub(ch)
            try:
                boxes = rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=5).items
            except grpc.RpcError as e:
                log.warning(kv("cri cleanup: list failed", error=e.code()))
                return
            for b in boxes:
                left = max(1.0, deadline - time.monotonic())
                with contextlib.suppress(grpc.RpcError):
                    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=b.id), timeout=left)
                    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=b.id), timeout=left)
            if boxes:
                log.info(kv("cri cleanup", sandboxes=len(boxes)))

    def kill_shims(self) -> None:
        """Kill shims started for our socket and every process under them (containers)."""
        sock = str(self.socket)
        shims = processes_matching(lambda a: "containerd-shim" in a[0] and sock in a)
        for shim in shims:
            for pid in reversed(descendants(shim)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            kill_group(shim, 1.0)
            with contextlib.suppress(ProcessLookupError):
                os.kill(shim, signal.SIGKILL)

    def remove_leftovers(self) -> None:
        """Unmount what is under our dir and delete our bridge (all idempotent)."""
        unmount_under(self.dir)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def stop(self, cri_cleanup: bool = True) -> None:
        """Tear down pods via CRI, stop containerd, then kill whatever a crash could leave."""
        if cri_cleanup and "containerd" in self.procs.procs:
            try:
                self._cri_cleanup()
            except Exception as e:
                log.warning(kv("cri cleanup failed", error=e))
        self.procs.stop(["containerd"])
        self.kill_shims()
        self.remove_leftovers()


def gateway_of(subnet: str) -> str:
    """A bridge's gateway address: the subnet's first host (the CNI bridge plugin's choice)."""
    return str(next(ipaddress.ip_network(subnet).hosts()))


def ensure_bridge(bridge: str, subnet: str) -> str:
    """The CNI bridge ``bridge`` with its gateway address, up, as the bridge plugin (``isGateway``)
    creates it at the first pod; returns the gateway address. For what must reach the host on an
    address of an interface the bed owns before any pod ran (loopback addresses are refused in
    EndpointSlices and as a kubelet's node IP). Idempotent; :meth:`Containerd.remove_leftovers`
    deletes the bridge."""
    gateway, prefix = gateway_of(subnet), ipaddress.ip_network(subnet).prefixlen
    if subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0:
        subprocess.run(
            ["ip", "link", "add", "name", bridge, "type", "bridge"], check=True, capture_output=True
        )
    addrs = subprocess.run(["ip", "-j", "addr", "show", "dev", bridge], capture_output=True, check=True)
    have = {a.get("local") for i in json.loads(addrs.stdout) for a in i.get("addr_info", [])}
    if gateway not in have:
        subprocess.run(
            ["ip", "addr", "add", f"{gateway}/{prefix}", "dev", bridge], check=True, capture_output=True
        )
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True, capture_output=True)
    return gateway
