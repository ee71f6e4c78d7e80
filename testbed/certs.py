"""The PKI of the test bed, made with ``cryptography`` (no openssl/cfssl binaries needed).

Layout mirrors kubeadm so that warmlet meets the same trust relationships as on a real
cluster: a cluster CA signs the apiserver's serving cert (and can sign kubelet serving
certs), a client CA signs every client identity (admin, scheduler, controller-manager, the
apiserver's kubelet client, nodes), a front-proxy CA serves the aggregation layer, and an
RSA key pair signs service-account tokens. Everything is reused when present (idempotent).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from testbed.util import kv

log = logging.getLogger("testbed.certs")

APISERVER_SANS = [
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "10.0.0.1",
]
_VALIDITY = dt.timedelta(days=3650)


@dataclass(frozen=True)
class CertPair:
    """Paths of a PEM certificate and its PEM private key."""

    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(path, 0o600)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _safe(cn: str) -> str:
    return cn.replace(":", "-").replace("/", "-")


class PKI:
    """All certificates of one test bed, stored as PEM files under ``dir``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self._ca("ca", "warmlet-testbed-ca")
        self.client_ca = self._ca("client-ca", "warmlet-testbed-client-ca")
        self.front_proxy_ca = self._ca("front-proxy-ca", "warmlet-testbed-front-proxy-ca")
        self.apiserver = self.issue_serving_cert("apiserver", "kube-apiserver", APISERVER_SANS)
        self.admin = self.issue_client_cert("kubernetes-admin", ("system:masters",))
        self.scheduler = self.issue_client_cert("system:kube-scheduler")
        self.controller_manager = self.issue_client_cert("system:kube-controller-manager")
        self.apiserver_kubelet_client = self.issue_client_cert(
            "kube-apiserver-kubelet-client", ("system:masters",)
        )
        self.front_proxy_client = self.issue_client_cert("front-proxy-client", ca=self.front_proxy_ca)
        self.sa_key, self.sa_pub = self._sa_keypair()

    # ------------------------------------------------------------------ issuing

    def _ca(self, stem: str, cn: str) -> CertPair:
        pair = CertPair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        if pair.cert.exists() and pair.key.exists():
            return pair
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(pair.key, key)
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        log.info(kv("issued CA", cn=cn, path=pair.cert))
        return pair

    def _issue(
        self,
        stem: str,
        cn: str,
        orgs: tuple[str, ...],
        ca: CertPair,
        server: bool,
        sans: list[str] | None = None,
    ) -> CertPair:
        pair = CertPair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        if pair.cert.exists() and pair.key.exists():
            return pair
        ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
        ca_key = _load_key(ca.key)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, orgs))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_encipherment=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    content_commitment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if sans:
            names: list[x509.GeneralName] = []
            for s in sans:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(s)))
                except ValueError:
                    names.append(x509.DNSName(s))
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        _write_key(pair.key, key)
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        log.info(kv("issued cert", cn=cn, orgs=",".join(orgs), server=server, path=pair.cert))
        return pair

    def issue_client_cert(
        self, cn: str, orgs: tuple[str, ...] | list[str] = (), ca: CertPair | None = None
    ) -> CertPair:
        """A client cert the apiserver maps to user ``cn`` in groups ``orgs`` (reused if present)."""
        orgs = tuple(orgs)
        stem = "client-" + _safe(cn) + ("" if not orgs else "--" + "-".join(_safe(o) for o in orgs))
        return self._issue(stem, cn, orgs, ca or self.client_ca, server=False)

    def issue_node_client_cert(self, node: str) -> CertPair:
        """The kubelet identity of ``node`` (``system:node:<node>`` in ``system:nodes``)."""
        return self.issue_client_cert(f"system:node:{node}", ("system:nodes",))

    def issue_serving_cert(self, stem: str, cn: str, sans: list[str]) -> CertPair:
        """A TLS serving cert signed by the cluster CA (apiserver; warmlet's kubelet API)."""
        return self._issue(f"serving-{_safe(stem)}", cn, (), self.ca, server=True, sans=sans)

    def issue_kubelet_serving_cert(self, node: str, ips: list[str] | None = None) -> CertPair:
        """A kubelet serving cert for ``node`` the apiserver can verify with :attr:`ca`."""
        return self.issue_serving_cert(
            f"kubelet-{node}", f"system:node:{node}", [node, "localhost", *(ips or ["127.0.0.1"])]
        )

    def _sa_keypair(self) -> tuple[Path, Path]:
        key_path, pub_path = self.dir / "sa.key", self.dir / "sa.pub"
        if key_path.exists() and pub_path.exists():
            return key_path, pub_path
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(key_path, key)
        pub_path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return key_path, pub_path


def kubeconfig(path: Path, server: str, ca: Path, client: CertPair, user: str) -> Path:
    """Write a kubeconfig that references the PEM files by path (cheap to re-create)."""
    import yaml

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "warmlet-testbed", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [
            {"name": user, "user": {"client-certificate": str(client.cert), "client-key": str(client.key)}}
        ],
        "contexts": [
            {
                "name": "warmlet-testbed",
                "context": {"cluster": "warmlet-testbed", "user": user, "namespace": "default"},
            }
        ],
        "current-context": "warmlet-testbed",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path
