"""The serving certificate from a kubelet-serving CSR: pure decisions, and the manager against a
fake API server that signs like kube-controller-manager (a CA of its own)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from common.clock import FakeClock
from common.retry import Backoff
from provider.kubelet_api import serving_csr as sc
from provider.kubelet_api.tls import ensure_serving_cert, issue_certificate, server_ssl_context

pytestmark = pytest.mark.unit
JSON = dict[str, Any]


# ---------------------------------------------------------------- pure
def test_sans_follow_kubelet_address_rules() -> None:
    dns, ips = sc.hostnames_and_ips(
        [
            ("InternalIP", "10.0.0.5"),
            ("Hostname", "node-a"),
            ("Hostname", "10.0.0.7"),
            ("ExternalIP", "not-an-ip"),
            ("InternalDNS", "node-a.internal"),
            ("ExternalDNS", "node-a.example"),
            ("InternalIP", ""),
            ("InternalIP", "10.0.0.5"),
        ]
    )
    assert dns == ("node-a", "node-a.example", "node-a.internal")
    assert ips == ("10.0.0.5", "10.0.0.7")


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS", "Other"]),
            st.one_of(st.ip_addresses().map(str), st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True)),
        ),
        max_size=8,
    )
)
def test_sans_take_each_address_by_its_type(addresses: list[tuple[str, str]]) -> None:
    dns, ips = sc.hostnames_and_ips(addresses)
    assert list(dns) == sorted(set(dns)) and len(set(ips)) == len(ips)
    names = {a for k, a in addresses if k in ("InternalDNS", "ExternalDNS") and a}
    names |= {a for k, a in addresses if k == "Hostname" and not sc._ip(a)}
    addrs = {sc._ip(a) for k, a in addresses if k in ("InternalIP", "ExternalIP", "Hostname") and sc._ip(a)}
    assert set(dns) == names and set(ips) == addrs  # "Other", and names given as InternalIP: ignored


def test_usages_add_key_encipherment_for_rsa_only() -> None:
    assert sc.key_usages(ec.generate_private_key(ec.SECP256R1())) == ["digital signature", "server auth"]
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert sc.key_usages(rsa_key) == ["key encipherment", "digital signature", "server auth"]


def test_csr_names_the_node_as_kubelet_does() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    req = x509.load_pem_x509_csr(sc.csr_pem(key, "n1", ["n1"], ["127.0.0.1"]))
    assert req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:n1"
    orgs = req.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in orgs] == ["system:nodes"]
    san = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["n1"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert req.is_signature_valid


@given(
    st.floats(0, 1e9),
    st.floats(1, 1e8),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_rotation_deadline_is_within_70_to_90_percent(nb: float, life: float, r1: float, r2: float) -> None:
    d1, d2 = sc.rotation_deadline(nb, nb + life, r1), sc.rotation_deadline(nb, nb + life, r2)
    assert nb + 0.7 * life - 1e-6 <= d1 <= nb + 0.9 * life + 1e-6
    assert (d1 <= d2) == (r1 <= r2) or abs(d1 - d2) < 1e-6


def test_rotation_window_is_injectable() -> None:
    assert sc.rotation_deadline(100, 200, 0.0, (0.1, 0.2)) == pytest.approx(110)
    assert sc.rotation_deadline(100, 200, 1.0, (0.1, 0.2)) == pytest.approx(120)


def _csr(conds: list[JSON], cert: bytes = b"") -> JSON:
    status: JSON = {"conditions": conds}
    if cert:
        status["certificate"] = base64.b64encode(cert).decode()
    return {"status": status}


def test_csr_state_of_each_status() -> None:
    assert sc.csr_state({}).phase == "pending"
    assert sc.csr_state(_csr([{"type": "Approved", "status": "True"}])).phase == "pending"  # not signed yet
    issued = sc.csr_state(_csr([{"type": "Approved", "status": "True"}], b"PEM"))
    assert (issued.phase, issued.certificate) == ("issued", b"PEM")
    denied = sc.csr_state(_csr([{"type": "Denied", "status": "True", "reason": "No", "message": "nope"}]))
    assert (denied.phase, denied.message) == ("denied", "No: nope")
    failed = sc.csr_state(_csr([{"type": "Approved"}, {"type": "Failed", "reason": "SignerError"}], b"x"))
    assert failed.phase == "failed"


@pytest.mark.parametrize("mode", ["auto", "always", "never"])
@pytest.mark.parametrize("may", [True, False])
@pytest.mark.parametrize("has_file", [True, False])
def test_mode_decisions(mode: sc.Mode, may: bool, has_file: bool) -> None:
    eff = sc.effective_mode(mode, has_file)
    expected = mode == "always" or (mode == "auto" and may and not has_file)
    assert sc.enabled(eff, may) == expected


# ---------------------------------------------------------------- a fake API server that signs
class FakeSigner:
    """CSR create/get/watch and SelfSubjectAccessReview, with a CA that signs approved requests."""

    def __init__(
        self,
        allowed: bool = True,
        verdict: str = "Approved",
        lifetime: float = 1000.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.now = now
        self.allowed = allowed
        self.verdict = verdict
        self.lifetime = lifetime
        self.ca, self.ca_key = issue_certificate("cluster-ca", None, None, is_ca=True)
        self.csrs: dict[str, JSON] = {}
        self.reviews = 0

    async def post(self, path: str, body: JSON, **_: Any) -> JSON:
        if path.endswith("selfsubjectaccessreviews"):
            self.reviews += 1
            return {"status": {"allowed": self.allowed}}
        name = f"csr-{len(self.csrs)}"
        obj = {**body, "metadata": {"name": name, "resourceVersion": "1"}, "status": {}}
        self.csrs[name] = obj
        return obj

    async def get(self, path: str, **_: Any) -> JSON:
        return self.csrs[path.rsplit("/", 1)[1]]

    async def watch(self, path: str, rv: str, timeout_seconds: int = 0, **params: Any) -> AsyncIterator[JSON]:
        name = params["fieldSelector"].split("=", 1)[1]
        obj = self.csrs[name]
        if self.verdict == "Approved":
            obj["status"] = {
                "conditions": [{"type": "Approved", "status": "True"}],
                "certificate": base64.b64encode(self.sign(obj)).decode(),
            }
        else:
            obj["status"] = {"conditions": [{"type": self.verdict, "status": "True", "reason": "Operator"}]}
        yield {"type": "MODIFIED", "object": obj}

    def sign(self, obj: JSON) -> bytes:
        req = x509.load_pem_x509_csr(base64.b64decode(obj["spec"]["request"]))
        now = dt.datetime.fromtimestamp(self.now(), dt.UTC)
        san = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(req.subject)
            .issuer_name(self.ca.subject)
            .public_key(req.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(seconds=10))
            .not_valid_after(now + dt.timedelta(seconds=self.lifetime))
            .add_extension(san, critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        from cryptography.hazmat.primitives.serialization import Encoding

        return cert.public_bytes(Encoding.PEM)


def _ctx(tmp: Path) -> ssl.SSLContext:
    return server_ssl_context(ensure_serving_cert(None, None, tmp / "self", "n1"), None)


def _manager(fake: FakeSigner, tmp: Path, ctx: ssl.SSLContext, **kw: Any) -> sc.ServingCertManager:
    return sc.ServingCertManager(
        fake,  # type: ignore[arg-type]
        "n1",
        [("InternalIP", "127.0.0.1"), ("Hostname", "n1")],
        tmp / "pki",
        ctx,
        backoff=Backoff(base=0.01, cap=0.01),
        **kw,
    )


async def test_issued_certificate_is_served_persisted_and_counted(tmp_path: Path) -> None:
    fake = FakeSigner()
    ctx = _ctx(tmp_path)
    m = _manager(fake, tmp_path, ctx, expiration_seconds=900)
    before = sc.CERT_ROTATIONS._value.get()
    await m.rotate()
    (csr,) = fake.csrs.values()
    assert csr["spec"]["signerName"] == sc.SIGNER and csr["spec"]["expirationSeconds"] == 900
    assert csr["spec"]["usages"] == ["digital signature", "server auth"]
    assert m.current is not None and m.issued.is_set()
    assert m.current.issuer == fake.ca.subject
    assert sc.CERT_ROTATIONS._value.get() == before + 1
    assert sc.CERT_EXPIRY._value.get() == pytest.approx(m.current.not_valid_after_utc.timestamp())
    assert (tmp_path / "pki" / sc.CURRENT_FILE).stat().st_mode & 0o777 == 0o600
    # a restart serves the persisted pair at once, without a request
    again = _manager(FakeSigner(), tmp_path, _ctx(tmp_path))
    assert again.load_persisted() and again.current == m.current


async def test_no_request_when_the_identity_may_not_create_csrs(tmp_path: Path) -> None:
    fake = FakeSigner(allowed=False)
    m = _manager(fake, tmp_path, _ctx(tmp_path))
    await asyncio.wait_for(m.run(), 5)  # returns: nothing to do
    assert fake.reviews == 1 and not fake.csrs and m.current is None


async def test_never_mode_asks_nothing(tmp_path: Path) -> None:
    fake = FakeSigner()
    m = _manager(fake, tmp_path, _ctx(tmp_path), mode="never")
    await m.run()
    assert fake.reviews == 0 and not fake.csrs and not m.load_persisted()


@pytest.mark.parametrize("verdict", ["Denied", "Failed"])
async def test_denied_or_failed_is_reported_and_retried_with_a_new_csr(tmp_path: Path, verdict: str) -> None:
    fake = FakeSigner(verdict=verdict)
    rejected: list[str] = []
    m = _manager(fake, tmp_path, _ctx(tmp_path), on_rejected=rejected.append)
    counter = sc.CSR_RESULTS.labels(result=verdict.lower())
    before = counter._value.get()
    task = asyncio.create_task(m.run())
    for _ in range(500):
        if len(fake.csrs) >= 3:
            break
        await asyncio.sleep(0.01)
    fake.verdict = "Approved"
    await asyncio.wait_for(m.issued.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert counter._value.get() >= before + 2
    assert len(rejected) >= 2 and verdict.lower() in rejected[0]
    assert m.current is not None


async def test_rotation_waits_for_the_deadline_on_the_clock(tmp_path: Path) -> None:
    clock = FakeClock(wall_offset=time.time() - 1000.0)
    fake = FakeSigner(lifetime=1000.0, now=clock.time)
    m = _manager(fake, tmp_path, _ctx(tmp_path), clock=clock, rand=lambda: 0.5, window=(0.5, 0.5))
    task = asyncio.create_task(m.run())
    await asyncio.wait_for(m.issued.wait(), 5)
    assert len(fake.csrs) == 1
    first = m.current
    assert first is not None
    due = first.not_valid_before_utc.timestamp() + 0.5 * (
        first.not_valid_after_utc.timestamp() - first.not_valid_before_utc.timestamp()
    )
    m.issued.clear()
    for _ in range(20):
        await asyncio.sleep(0)
    await clock.set(clock.monotonic() + (due - clock.time()) - 5)
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(fake.csrs) == 1  # not yet
    await clock.advance(10)
    await asyncio.wait_for(m.issued.wait(), 5)
    assert len(fake.csrs) == 2 and m.current is not first
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------- the live SSLContext
async def test_new_chain_serves_new_handshakes_and_open_connections_survive(tmp_path: Path) -> None:
    fake = FakeSigner()
    ctx = _ctx(tmp_path)

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():
            w.write(line)
            await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context()
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        peer = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return r, w, peer

    try:
        r1, w1, before = await connect()
        await _manager(fake, tmp_path, ctx).rotate()
        _, w2, after = await connect()
        assert x509.load_der_x509_certificate(after).issuer == fake.ca.subject
        assert x509.load_der_x509_certificate(before).issuer != fake.ca.subject
        # the connection opened before the swap still works, with its old certificate
        w1.write(b"still here\n")
        await w1.drain()
        assert await r1.readline() == b"still here\n"
        assert w1.get_extra_info("ssl_object").getpeercert(binary_form=True) == before
        for w in (w1, w2):
            w.close()
    finally:
        server.close()
        await server.wait_closed()
