"""metrics-server as a process of the test bed, scraping kubelet APIs with full TLS verification.

Built by ``scripts/build-metrics-server.sh`` into the cluster binaries' dir. It runs as its own
identity (``system:metrics-server``: a client certificate of the bed's client CA) with what its
release manifests grant (nodes/metrics get; pods and nodes get/list/watch; system:auth-delegator;
extension-apiserver-authentication-reader in kube-system), verifies every kubelet's serving
certificate with ``--kubelet-certificate-authority`` (never ``--kubelet-insecure-tls``) and is
registered as the APIService ``v1beta1.metrics.k8s.io`` so ``kubectl top`` answers through the
API server's aggregation layer.

Where it listens: kube-apiserver runs with ``--enable-aggregator-routing=true``, so it dials the
address of the Service's EndpointSlice, and the API server refuses loopback addresses there. The
bed's rule is "loopback, or interfaces the bed creates": metrics-server binds the gateway address
of the bed's CNI bridge (``wltb<slot>``, ``isGateway`` in testbed/containerd.py's conflist). The
bridge plugin creates that bridge at the first pod; :meth:`MetricsServer.start` creates it the same
way if no pod ran yet (same name, same gateway address: the plugin then finds it as it wants it),
and the bed's teardown deletes it with the rest of the slot.

Which CA verifies kubelet-serving certificates: kube-controller-manager signs every signer,
``kubernetes.io/kubelet-serving`` included, with ``--cluster-signing-cert-file``, which in the bed
is the client CA (``pki.client_ca``) -- so that is ``--kubelet-certificate-authority``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from testbed.bed import TestBed
from testbed.containerd import ensure_bridge, gateway_of
from testbed.util import bin_dir, free_port, kv

log = logging.getLogger("testbed.metrics_server")

NAME = "metrics-server"
NAMESPACE = "kube-system"
USER = "system:metrics-server"
API_SERVICE = "v1beta1.metrics.k8s.io"
BUILD = "scripts/build-metrics-server.sh"
READ = ["get", "list", "watch"]


class MetricsServerMissing(RuntimeError):
    """The binary is not built (``scripts/build-metrics-server.sh``)."""


def binary() -> Path:
    return bin_dir() / NAME


def rbac_manifests() -> list[dict[str, Any]]:
    """What metrics-server's release manifests grant, bound to :data:`USER`."""
    user = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]

    def binding(kind: str, name: str, role_kind: str, role: str, ns: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name} | ({"namespace": ns} if ns else {})
        return {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": kind,
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": user,
        }

    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:metrics-server"},
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": READ},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {
                "name": "system:aggregated-metrics-reader",
                "labels": {
                    f"rbac.authorization.k8s.io/aggregate-to-{r}": "true" for r in ("view", "edit", "admin")
                },
            },
            "rules": [
                {
                    "apiGroups": ["metrics.k8s.io"],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        binding("ClusterRoleBinding", "system:metrics-server", "ClusterRole", "system:metrics-server"),
        binding(
            "ClusterRoleBinding",
            "metrics-server:system:auth-delegator",
            "ClusterRole",
            "system:auth-delegator",
        ),
        binding(
            "RoleBinding",
            "metrics-server-auth-reader",
            "Role",
            "extension-apiserver-authentication-reader",
            NAMESPACE,
        ),
    ]


def service_manifests(address: str, port: int, ca_bundle_pem: bytes) -> list[dict[str, Any]]:
    """A selector-less Service, its EndpointSlice (the bridge address) and the APIService."""
    import base64

    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": NAME,
                "namespace": NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": NAME,
                    "endpointslice.kubernetes.io/managed-by": "testbed.warmlet.io",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": API_SERVICE},
            "spec": {
                "service": {"name": NAME, "namespace": NAMESPACE, "port": 443},
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "caBundle": base64.b64encode(ca_bundle_pem).decode(),
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


class MetricsServer:
    """metrics-server of one bed: :meth:`start` (quick, synchronous), :meth:`available`, :meth:`stop`."""

    def __init__(self, bed: TestBed, metric_resolution: str = "15s") -> None:
        self.bed = bed
        self.resolution = metric_resolution
        self.address = gateway_of(bed.pod_subnet)
        self.port = 0
        self.dir = bed.state_dir / NAME

    def start(self) -> None:
        if not binary().exists():
            raise MetricsServerMissing(f"{binary()} is not built; run {BUILD}")
        self.dir.mkdir(parents=True, exist_ok=True)
        ensure_bridge(self.bed.cni_bridge, self.bed.pod_subnet)
        pki = self.bed.pki
        serving = self.bed.pki.issue_serving_cert(
            NAME, NAME, [f"{NAME}.{NAMESPACE}.svc", f"{NAME}.{NAMESPACE}.svc.cluster.local", self.address]
        )
        kc = self.bed.kubeconfig_for(USER)
        self.port = free_port()
        docs = [*rbac_manifests(), *service_manifests(self.address, self.port, pki.ca.cert.read_bytes())]
        self._apply(docs)
        self.bed.procs.spawn(
            NAME,
            [
                str(binary()),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--bind-address={self.address}",
                f"--secure-port={self.port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                # full verification of every kubelet's serving certificate: the kubelet-serving signer's CA
                f"--kubelet-certificate-authority={pki.client_ca.cert}",
                "--kubelet-use-node-status-port",
                "--kubelet-preferred-address-types=InternalIP",
                f"--metric-resolution={self.resolution}",
                f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--v=2",
            ],
        )
        log.info(kv("metrics-server spawned", address=self.address, port=self.port))

    def _apply(self, docs: list[dict[str, Any]]) -> None:
        path = self.dir / "manifests.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        self.bed.kubectl("apply", "-f", str(path))

    def alive(self) -> bool:
        p = self.bed.procs.procs.get(NAME)
        return p is not None and p.poll() is None

    def available(self) -> bool:
        """The APIService says Available (the aggregator reached metrics-server over verified TLS)."""
        if not self.alive():
            raise RuntimeError(f"metrics-server exited; log: {self.bed.procs.logs.get(NAME)}")
        obj = json.loads(self.bed.kubectl("get", "apiservice", API_SERVICE, "-o", "json"))
        conds = (obj.get("status") or {}).get("conditions") or []
        return any(c.get("type") == "Available" and c.get("status") == "True" for c in conds)

    def log_tail(self, n: int = 30) -> str:
        path = self.bed.procs.logs.get(NAME)
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path else ""

    def stop(self) -> None:
        """Stop the process and remove the APIService (the rest dies with the bed)."""
        if NAME in self.bed.procs.procs:
            self.bed.procs.stop([NAME])
        try:
            self.bed.kubectl("delete", "apiservice", API_SERVICE, "--ignore-not-found")
        except RuntimeError as e:
            log.warning(kv("could not delete the APIService", err=str(e)))
