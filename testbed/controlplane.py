"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

Flags follow kubeadm's static pods (Node,RBAC authorization, NodeRestriction, service-account
signing, a separate client CA) so that warmlet authenticates and is authorized exactly as a
kubelet is on a real cluster. Everything binds to 127.0.0.1 on free ports; state lives in the
slot's state dir and dies with it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from testbed.certs import PKI, kubeconfig
from testbed.etcd import EtcdGateway
from testbed.util import ProcessSet, StartupError, bin_dir, free_port, http_get, https_get, kv
from testbed.wait import wait_until

log = logging.getLogger("testbed.controlplane")

SERVICE_CIDR = "10.0.0.0/24"
# Client rate limits of controller-manager and scheduler: the defaults (20 qps, burst 30) would
# throttle a burst of hundreds of Jobs fired at one instant (bench/midnight_burst.py) and make
# the client-side limiter, not the control plane, the measured bottleneck.
CONTROLLER_CLIENT_QPS = ("--kube-api-qps=200", "--kube-api-burst=400")


@dataclass
class ControlPlaneInfo:
    """What clients need to reach the control plane."""

    apiserver_url: str
    admin_kubeconfig: Path
    etcd_url: str


class ControlPlane:
    """Starts and stops the four control-plane processes of one test-bed slot."""

    def __init__(
        self, state_dir: Path, pki: PKI, procs: ProcessSet, verify_kubelet_serving: bool = False
    ) -> None:
        self.dir = state_dir / "controlplane"
        self.pki = pki
        self.procs = procs
        self.verify_kubelet_serving = verify_kubelet_serving
        self.bins = bin_dir()
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self.apiserver_url = ""
        self.admin_kubeconfig = self.dir / "admin.kubeconfig"

    # ------------------------------------------------------------------ etcd
    def spawn_etcd(self) -> None:
        """Start etcd (single member, no fsync: the data is throwaway)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.etcd_port:  # a restart (:meth:`start_etcd`) keeps ports and data dir
            self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        url, purl = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.etcd_peer_port}"
        self.procs.spawn(
            "etcd",
            [
                str(self.bins / "etcd"),
                "--name=testbed",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={url}",
                f"--advertise-client-urls={url}",
                f"--listen-peer-urls={purl}",
                f"--initial-advertise-peer-urls={purl}",
                f"--initial-cluster=testbed={purl}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync",
                "--log-level=warn",
                "--quota-backend-bytes=2147483648",
            ],
        )

    def wait_etcd(self, timeout: float = 30) -> None:
        """etcd answers /health with health=true."""
        url = f"http://127.0.0.1:{self.etcd_port}/health"
        wait_until(
            "etcd",
            lambda: json.loads(http_get(url, 1)[1]).get("health") == "true",
            timeout,
            alive=self.procs.alive("etcd"),
            log_path=self.procs.logs["etcd"],
        )

    # ------------------------------------------------------------------ apiserver
    def spawn_apiserver(self) -> None:
        """Start kube-apiserver on a free loopback port, kubeadm-like flags."""
        p = self.pki
        if not self.apiserver_port:  # a restart (:meth:`start_apiserver`) keeps the port
            self.apiserver_port = free_port()
        self.apiserver_url = f"https://127.0.0.1:{self.apiserver_port}"
        args = [
            str(self.bins / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--tls-cert-file={p.apiserver.cert}",
            f"--tls-private-key-file={p.apiserver.key}",
            f"--client-ca-file={p.client_ca.cert}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            f"--kubelet-client-certificate={p.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={p.apiserver_kubelet_client.key}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--requestheader-client-ca-file={p.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-username-headers=X-Remote-User",
            f"--proxy-client-cert-file={p.front_proxy_client.cert}",
            f"--proxy-client-key-file={p.front_proxy_client.key}",
            "--enable-aggregator-routing=true",
            "--profiling=false",
            "--v=1",
        ]
        if self.verify_kubelet_serving:
            args.append(f"--kubelet-certificate-authority={p.ca.cert}")
        self.procs.spawn("kube-apiserver", args)

    def wait_apiserver(self, timeout: float = 60) -> None:
        """/readyz answers 200 ``ok`` to the admin identity."""
        p = self.pki
        url = f"{self.apiserver_url}/readyz"
        wait_until(
            "kube-apiserver",
            lambda: https_get(url, p.ca.cert, p.admin.cert, p.admin.key, 2) == (200, b"ok"),
            timeout,
            interval=0.2,
            alive=self.procs.alive("kube-apiserver"),
            log_path=self.procs.logs["kube-apiserver"],
        )
        kubeconfig(self.admin_kubeconfig, self.apiserver_url, p.ca.cert, p.admin, "admin")

    # ------------------------------------------------------------------ controllers
    def spawn_controllers(self) -> None:
        """Start kube-controller-manager and kube-scheduler with their own identities."""
        p = self.pki
        cm_kc = kubeconfig(
            self.dir / "controller-manager.kubeconfig",
            self.apiserver_url,
            p.ca.cert,
            p.controller_manager,
            "system:kube-controller-manager",
        )
        sch_kc = kubeconfig(
            self.dir / "scheduler.kubeconfig",
            self.apiserver_url,
            p.ca.cert,
            p.scheduler,
            "system:kube-scheduler",
        )
        self.cm_port, self.sched_port = free_port(), free_port()
        self.procs.spawn(
            "kube-controller-manager",
            [
                str(self.bins / "kube-controller-manager"),
                f"--kubeconfig={cm_kc}",
                f"--authentication-kubeconfig={cm_kc}",
                f"--authorization-kubeconfig={cm_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.cm_port}",
                "--leader-elect=false",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p.sa_key}",
                f"--root-ca-file={p.ca.cert}",
                f"--cluster-signing-cert-file={p.client_ca.cert}",
                f"--cluster-signing-key-file={p.client_ca.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--client-ca-file={p.client_ca.cert}",
                f"--requestheader-client-ca-file={p.front_proxy_ca.cert}",
                *CONTROLLER_CLIENT_QPS,
                "--profiling=false",
                "--v=1",
            ],
        )
        self.procs.spawn(
            "kube-scheduler",
            [
                str(self.bins / "kube-scheduler"),
                f"--kubeconfig={sch_kc}",
                f"--authentication-kubeconfig={sch_kc}",
                f"--authorization-kubeconfig={sch_kc}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.sched_port}",
                "--leader-elect=false",
                *CONTROLLER_CLIENT_QPS,
                "--profiling=false",
                "--v=1",
            ],
        )

    def wait_controllers(self, timeout: float = 60) -> None:
        """Both answer /healthz, and the ServiceAccount controller made ``default/default``."""
        for name, port in (("kube-scheduler", self.sched_port), ("kube-controller-manager", self.cm_port)):
            url = f"https://127.0.0.1:{port}/healthz"

            def healthy(url: str = url) -> bool:
                return https_get(url, timeout=2)[0] == 200

            wait_until(
                name,
                healthy,
                timeout,
                interval=0.2,
                alive=self.procs.alive(name),
                log_path=self.procs.logs[name],
            )
        p = self.pki
        sa = f"{self.apiserver_url}/api/v1/namespaces/default/serviceaccounts/default"
        cm = f"{self.apiserver_url}/api/v1/namespaces/default/configmaps/kube-root-ca.crt"

        def ready() -> bool:
            return all(https_get(u, p.ca.cert, p.admin.cert, p.admin.key, 2)[0] == 200 for u in (sa, cm))

        wait_until(
            "default ServiceAccount",
            ready,
            timeout,
            interval=0.2,
            alive=self.procs.alive("kube-controller-manager"),
            log_path=self.procs.logs["kube-controller-manager"],
        )

    def start(self) -> None:
        """Bring up all four in order (blocking); :class:`testbed.bed.TestBed` interleaves instead."""
        t0 = time.monotonic()
        self.spawn_etcd()
        self.wait_etcd()
        self.spawn_apiserver()
        self.wait_apiserver()
        self.spawn_controllers()
        self.wait_controllers()
        log.info(kv("control plane ready", url=self.apiserver_url, seconds=round(time.monotonic() - t0, 1)))

    def stop(self) -> None:
        """Controllers first, then apiserver, then etcd."""
        self.procs.stop(["kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"])

    # ------------------------------------------------------------------ outages (fault tests)
    def running(self, name: str) -> bool:
        """True while ``name`` (``etcd``, ``kube-apiserver``, ...) is running."""
        p = self.procs.procs.get(name)
        return p is not None and p.poll() is None

    def stop_apiserver(self, grace: float = 10.0) -> None:
        """Stop kube-apiserver only (TERM, then KILL): clients see refused connections."""
        self.procs.stop(["kube-apiserver"], grace=grace)

    def start_apiserver(self, timeout: float = 120) -> None:
        """Start kube-apiserver again in place: same port, certs, flags and etcd; wait for /readyz."""
        if not self.running("kube-apiserver"):
            self.spawn_apiserver()
        self.wait_apiserver(timeout)
        self.wait_controllers_resynced(timeout)

    def wait_controllers_resynced(self, timeout: float = 120) -> None:
        """After an outage the controllers' informers back off (a restarted apiserver even answers
        403 until its RBAC cache fills): wait until a new namespace gets its ``default``
        ServiceAccount again, so the next test finds a working control plane."""
        probe = f"probe-{uuid.uuid4().hex[:8]}"

        def created() -> bool:  # a create that timed out may still have happened
            return self._try_kubectl("create", "namespace", probe) or self._try_kubectl("get", "ns", probe)

        wait_until("apiserver accepts writes", created, timeout)
        try:
            wait_until(
                "controllers resynced (default ServiceAccount of a new namespace)",
                lambda: self._try_kubectl("get", "serviceaccount", "default", "-n", probe),
                timeout,
                interval=0.5,
                alive=self.procs.alive("kube-controller-manager"),
                log_path=self.procs.logs["kube-controller-manager"],
            )
        finally:
            self._try_kubectl("delete", "namespace", probe, "--wait=false")

    def _try_kubectl(self, *args: str) -> bool:
        try:
            self.kubectl(*args, timeout=15)
        except Exception:
            return False
        return True

    def stop_etcd(self, grace: float = 10.0) -> None:
        """Stop etcd only; kube-apiserver stays up and answers errors until etcd is back."""
        self.procs.stop(["etcd"], grace=grace)

    def start_etcd(self, timeout: float = 60) -> None:
        """Start etcd again in place (same ports and data dir: every object survives)."""
        if not self.running("etcd"):
            self.spawn_etcd()
        self.wait_etcd(timeout)
        self.wait_apiserver(timeout)
        self.wait_controllers_resynced(max(timeout, 120))

    @property
    def etcd(self) -> EtcdGateway:
        """Direct calls to this slot's etcd (fault injection: compaction behind the apiserver)."""
        return EtcdGateway(self.etcd_port)

    def kubectl(self, *args: str, timeout: float = 60) -> str:
        """Run kubectl as admin (handy in tests and the CLI)."""
        r = subprocess.run(
            [str(self.bins / "kubectl"), f"--kubeconfig={self.admin_kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if r.returncode != 0:
            raise StartupError(f"kubectl {' '.join(args)}: {r.stderr}")
        return r.stdout
