"""The kubelet API's serving certificate from the cluster: a ``kubernetes.io/kubelet-serving`` CSR.

What kubelet does with ``serverTLSBootstrap: true`` (pkg/kubelet/certificate and client-go's
util/certificate): a fresh key, a CertificateSigningRequest for ``CN=system:node:<node>``,
``O=system:nodes`` with the node's addresses as SANs, a watch until it is approved and signed,
then the pair is persisted (``kubelet-server-current.pem``: certificate chain and key in one
file, so a restart serves it at once) and loaded into the live ``ssl.SSLContext``. Loading a new
chain into a context affects new handshakes only: connections already open keep theirs. The
next request is made at a jittered deadline at 70-90 % of the certificate's lifetime.

Until a certificate is issued, and whenever CSRs are impossible (the identity may not create
them), denied or fail, the self-signed certificate of :mod:`provider.kubelet_api.tls` is served;
a denied or failed request is logged as a Warning, counted and retried with back-off.

Pure decisions (SANs, usages, rotation deadline, what a CSR's status means) are functions; the
:class:`ServingCertManager` does the API calls.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import logging
import os
import random
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from prometheus_client import Counter, Gauge

from common.clock import SYSTEM, Clock
from common.retry import Backoff, retry
from provider.kubeclient import ApiError, KubeClient

log = logging.getLogger(__name__)
JSON = dict[str, Any]

SIGNER: Final = "kubernetes.io/kubelet-serving"
CURRENT_FILE: Final = "kubelet-server-current.pem"  # kubelet's name, in server.cert_dir
CSR_PATH: Final = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
ROTATION_WINDOW: Final = (0.7, 0.9)  # kubelet: rotate at a jittered 70-90 % of the lifetime
WAIT_TIMEOUT: Final = 15 * 60.0  # a CSR not signed within this is given up; a new one follows
# between failed requests (each failure is a new CSR): 2 s doubling, jittered, at most 5 min
REQUEST_BACKOFF: Final = Backoff(base=2.0, cap=300.0)

CERT_EXPIRY = Gauge(
    "warmlet_serving_certificate_expiration_timestamp_seconds",
    "notAfter of the kubelet API's cluster-signed serving certificate (0: none, self-signed served)",
)
CERT_ROTATIONS = Counter(
    "warmlet_serving_certificate_rotations_total",
    "Cluster-signed serving certificates loaded into the kubelet API (first one included)",
)
CSR_RESULTS = Counter(
    "warmlet_serving_certificate_requests_total",
    "kubelet-serving CSRs by outcome (issued, denied, failed, timeout, error)",
    ["result"],
)

Mode = Literal["auto", "always", "never"]


# ---------------------------------------------------------------- pure decisions
def hostnames_and_ips(addresses: Iterable[tuple[str, str]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """kubelet's SANs from the Node's ``(type, address)`` pairs: Hostname (a name, or an IP if it
    parses as one), InternalIP/ExternalIP (IPs only), InternalDNS/ExternalDNS (names); sorted."""
    dns: set[str] = set()
    ips: set[str] = set()
    for kind, address in addresses:
        if not address:
            continue
        ip = _ip(address)
        if kind == "Hostname":
            (ips if ip else dns).add(ip or address)
        elif kind in ("InternalIP", "ExternalIP") and ip:
            ips.add(ip)
        elif kind in ("InternalDNS", "ExternalDNS"):
            dns.add(address)
    return tuple(sorted(dns)), tuple(sorted(ips, key=lambda a: ipaddress.ip_address(a).packed))


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return ""


def key_usages(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> list[str]:
    """kubelet's serving usages: digital signature + server auth, and key encipherment for RSA."""
    base = ["digital signature", "server auth"]
    return ["key encipherment", *base] if isinstance(key, rsa.RSAPrivateKey) else base


def csr_pem(key: ec.EllipticCurvePrivateKey, node_name: str, dns: Iterable[str], ips: Iterable[str]) -> bytes:
    """The PKCS#10 request: CN system:node:<node>, O system:nodes, the SANs."""
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}"),
        ]
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def rotation_deadline(
    not_before: float, not_after: float, rand: float, window: tuple[float, float] = ROTATION_WINDOW
) -> float:
    """When to request the next certificate: ``not_before`` plus a fraction of the lifetime drawn
    uniformly from ``window`` by ``rand`` in [0, 1] (kubelet: 70-90 %)."""
    lo, hi = window
    fraction = lo + (hi - lo) * min(1.0, max(0.0, rand))
    return not_before + max(0.0, not_after - not_before) * fraction


@dataclass(frozen=True)
class CsrState:
    """What a CSR's status says: ``pending``, ``issued`` (with the PEM chain), ``denied``, ``failed``."""

    phase: Literal["pending", "issued", "denied", "failed"]
    message: str = ""
    certificate: bytes = b""


def csr_state(obj: Mapping[str, Any]) -> CsrState:
    """Denied and Failed are final; Approved waits for the signer's ``status.certificate``."""
    status = obj.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    for kind in ("Denied", "Failed"):
        c = conds.get(kind)
        if c is not None and c.get("status", "True") == "True":
            why = f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
            return CsrState("denied" if kind == "Denied" else "failed", why)
    if "Approved" in conds and status.get("certificate"):
        return CsrState("issued", certificate=base64.b64decode(status["certificate"]))
    return CsrState("pending")


def certificate_fits(cert: x509.Certificate, node_name: str, dns: Iterable[str], ips: Iterable[str]) -> bool:
    """The certificate names this node (CN) and carries every SAN the node now has."""
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or cns[0].value != f"system:node:{node_name}":
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return set(dns) <= set(san.get_values_for_type(x509.DNSName)) and set(ips) <= have_ips


def effective_mode(mode: Mode, has_cert_file: bool) -> Mode:
    """An operator's own certificate file turns ``auto`` off (``always`` still requests one)."""
    return "never" if mode == "auto" and has_cert_file else mode


def enabled(mode: Mode, may_create: bool) -> bool:
    """``always``/``never`` as said; ``auto``: when the identity may create and watch CSRs."""
    return mode == "always" or (mode == "auto" and may_create)


# ---------------------------------------------------------------- persistence
def write_current(cert_dir: Path, chain_pem: bytes, key: ec.EllipticCurvePrivateKey) -> Path:
    """Chain then key in one 0600 file, replaced atomically (kubelet-server-current.pem)."""
    path = Path(cert_dir) / CURRENT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(chain_pem.rstrip(b"\n") + b"\n" + key_pem)
    os.replace(tmp, path)
    return path


def read_leaf(path: Path) -> x509.Certificate | None:
    """The first certificate of a PEM file, or None when missing or unreadable."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return None


class CsrRejected(Exception):
    """The CSR was denied or failed (retried with back-off, never silently)."""


class CsrTimeout(Exception):
    """No signed certificate within the wait timeout."""


# ---------------------------------------------------------------- the manager
class ServingCertManager:
    """Requests, serves, persists and rotates the cluster-signed serving certificate.

    ``ssl_ctx`` is the kubelet API's live server context; ``clock``, ``rand`` and ``window`` are
    injectable so a test can rotate a short-lived certificate quickly. ``on_rejected(message)``
    lets the caller record an Event for a denied/failed request.
    """

    def __init__(
        self,
        client: KubeClient,
        node_name: str,
        addresses: Iterable[tuple[str, str]],
        cert_dir: Path,
        ssl_ctx: ssl.SSLContext,
        *,
        mode: Mode = "auto",
        expiration_seconds: int | None = None,
        clock: Clock = SYSTEM,
        rand: Callable[[], float] = random.random,
        window: tuple[float, float] = ROTATION_WINDOW,
        backoff: Backoff = REQUEST_BACKOFF,
        wait_timeout: float = WAIT_TIMEOUT,
        on_rejected: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.node_name = node_name
        self.dns, self.ips = hostnames_and_ips(addresses)
        self.path = Path(cert_dir) / CURRENT_FILE
        self.ssl_ctx = ssl_ctx
        self.mode = mode
        self.expiration_seconds = expiration_seconds
        self.clock = clock
        self.rand = rand
        self.window = window
        self.backoff = backoff
        self.wait_timeout = wait_timeout
        self.on_rejected = on_rejected
        self.current: x509.Certificate | None = None
        self.issued = asyncio.Event()  # set whenever a cluster-signed certificate is served

    # ------------------------------------------------------------ serving
    def load_persisted(self) -> bool:
        """Serve the persisted pair at once if it is still valid and fits the node."""
        if self.mode == "never":
            return False
        cert = read_leaf(self.path)
        if cert is None or not self._usable(cert):
            return False
        try:
            self._serve(cert)
        except (OSError, ssl.SSLError) as e:
            log.warning("persisted serving certificate unusable path=%s err=%r", self.path, e)
            return False
        log.info(
            "serving the persisted cluster-signed certificate path=%s not_after=%s", self.path, _iso(cert)
        )
        return True

    def _usable(self, cert: x509.Certificate) -> bool:
        return cert.not_valid_after_utc.timestamp() > self.clock.time() and certificate_fits(
            cert, self.node_name, self.dns, self.ips
        )

    def _serve(self, cert: x509.Certificate) -> None:
        # new handshakes get the new chain; established connections keep theirs
        self.ssl_ctx.load_cert_chain(str(self.path))
        self.current = cert
        CERT_EXPIRY.set(cert.not_valid_after_utc.timestamp())
        CERT_ROTATIONS.inc()
        self.issued.set()

    def deadline(self) -> float:
        """Wall time of the next request (now when nothing usable is served)."""
        cert = self.current
        if cert is None or not self._usable(cert):
            return self.clock.time()
        return rotation_deadline(
            cert.not_valid_before_utc.timestamp(),
            cert.not_valid_after_utc.timestamp(),
            self.rand(),
            self.window,
        )

    # ------------------------------------------------------------ the loop
    async def may_create(self) -> bool:
        """SelfSubjectAccessReview: may this identity create and watch CSRs?"""
        for verb in ("create", "watch"):
            review = {
                "apiVersion": "authorization.k8s.io/v1",
                "kind": "SelfSubjectAccessReview",
                "spec": {
                    "resourceAttributes": {
                        "group": "certificates.k8s.io",
                        "resource": "certificatesigningrequests",
                        "verb": verb,
                    }
                },
            }
            answer = await self.client.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review)
            if not (answer.get("status") or {}).get("allowed"):
                return False
        return True

    async def run(self) -> None:
        """Decide (SSAR for ``auto``), then request and rotate until cancelled."""
        if self.mode == "never":
            return
        allowed = await retry(self.may_create, self.backoff, clock=self.clock, on_error=self._api_error)
        if not enabled(self.mode, allowed):
            log.info(
                "serving certificate stays self-signed: this identity may not create CSRs node=%s",
                self.node_name,
            )
            return
        while True:
            wait = self.deadline() - self.clock.time()
            if wait > 0:
                log.info("next serving certificate request in_seconds=%.0f node=%s", wait, self.node_name)
                await self.clock.sleep(wait)
            await retry(self.rotate, self.backoff, clock=self.clock, on_error=self._request_error)

    async def rotate(self) -> None:
        """One request: a new key, a CSR, wait for it, persist and serve the result."""
        key = ec.generate_private_key(ec.SECP256R1())
        spec: JSON = {
            "request": base64.b64encode(csr_pem(key, self.node_name, self.dns, self.ips)).decode(),
            "signerName": SIGNER,
            "usages": key_usages(key),
        }
        if self.expiration_seconds is not None:
            spec["expirationSeconds"] = self.expiration_seconds
        body = {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "csr-"},
            "spec": spec,
        }
        created = await self.client.post(CSR_PATH, body)
        name = created["metadata"]["name"]
        log.info("requested a serving certificate csr=%s signer=%s node=%s", name, SIGNER, self.node_name)
        chain = await self._wait_signed(name, created)
        cert = x509.load_pem_x509_certificates(chain)[0]
        if cert.public_key() != key.public_key():
            raise CsrRejected(f"csr {name}: the issued certificate is not for the requested key")
        await asyncio.to_thread(write_current, self.path.parent, chain, key)
        self._serve(cert)
        CSR_RESULTS.labels(result="issued").inc()
        log.info("serving the cluster-signed certificate csr=%s not_after=%s", name, _iso(cert))

    async def _wait_signed(self, name: str, obj: JSON) -> bytes:
        """Watch the CSR until it is signed (issued), denied or failed, or the timeout passes."""
        give_up = self.clock.monotonic() + self.wait_timeout
        while True:
            state = csr_state(obj)
            if state.phase == "issued":
                return state.certificate
            if state.phase in ("denied", "failed"):
                CSR_RESULTS.labels(result=state.phase).inc()
                raise CsrRejected(f"csr {name} {state.phase}: {state.message}")
            left = give_up - self.clock.monotonic()
            if left <= 0:
                CSR_RESULTS.labels(result="timeout").inc()
                raise CsrTimeout(f"csr {name} not signed within {self.wait_timeout:.0f}s")
            rv = obj["metadata"]["resourceVersion"]
            try:
                async for ev in self.client.watch(
                    CSR_PATH, rv, max(1, min(int(left), 300)), fieldSelector=f"metadata.name={name}"
                ):
                    if ev.get("type") in ("ADDED", "MODIFIED") and isinstance(ev.get("object"), dict):
                        obj = ev["object"]
                        if csr_state(obj).phase != "pending":
                            break
            except ApiError as e:
                if not e.gone:
                    raise
            if csr_state(obj).phase == "pending":  # watch ended or expired: read it again
                obj = await self.client.get(f"{CSR_PATH}/{name}")

    def _api_error(self, e: Exception, failures: int) -> None:
        log.warning("cannot ask whether CSRs are allowed attempt=%d err=%r", failures, e)

    def _request_error(self, e: Exception, failures: int) -> None:
        if not isinstance(e, CsrRejected | CsrTimeout):
            CSR_RESULTS.labels(result="error").inc()
        log.warning(
            "serving certificate request failed; %s attempt=%d err=%s",
            "keeping the current one" if self.current is not None else "serving the self-signed one",
            failures,
            e,
        )
        if self.on_rejected is not None and isinstance(e, CsrRejected):
            self.on_rejected(str(e))


def _iso(cert: x509.Certificate) -> str:
    return cert.not_valid_after_utc.astimezone(dt.UTC).isoformat()
