"""The kubelet API's serving certificate from the cluster (issue 15, part 4).

warmlet runs as its node identity (``system:node:<name>``); it requests a
``kubernetes.io/kubelet-serving`` certificate, the test approves the CSR as an operator would, and
the bed's kube-controller-manager signs it (``--cluster-signing-cert-file``: the client CA). The
kubelet API must then present a chain that verifies against that CA for 127.0.0.1, with kubelet's
subject and SANs; a short-lived certificate (``spec.expirationSeconds: 600``) on a clock running
40 times faster is rotated (approved again) while a connection opened before keeps working.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from csr_helpers import ScaledClock, approve_next_csr, presented_cert
from e2e_helpers import E2E, wait_for

from provider.app import WarmletNode
from provider.kubelet_api.serving_csr import CURRENT_FILE


async def _get(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> int:
    """One keep-alive GET /healthz on an open connection; returns the status code."""
    w.write(b"GET /healthz HTTP/1.1\r\nHost: warmlet\r\n\r\n")
    await w.drain()
    head = (await r.readuntil(b"\r\n\r\n")).decode()
    length = next(int(h.split(":")[1]) for h in head.split("\r\n") if h.lower().startswith("content-length"))
    await r.readexactly(length)
    return int(head.split(" ")[1])


async def test_cluster_signed_serving_certificate_is_served_and_rotated(e2e: E2E) -> None:
    cfg = e2e.config()
    name = cfg.node.name
    cfg.kubeconfig = e2e.testbed.kubeconfig_for_node(name)  # kubelet's own identity
    cfg.server.tls_bootstrap_expiration_seconds = 600
    node = WarmletNode(cfg, serve_kubelet_api=True, cert_clock=ScaledClock(40))
    e2e.nodes.append(node)
    await node.start(within=120)
    port = node.node.kubelet_port  # type: ignore[union-attr]
    ca = e2e.testbed.client_ca_cert  # the kubelet-serving signer's CA in the bed

    # self-signed until an operator approves
    first_served = await presented_cert(port)
    ca_subject = x509.load_pem_x509_certificate(await asyncio.to_thread(Path(ca).read_bytes)).subject
    assert first_served.issuer != ca_subject

    seen: set[str] = set()
    csr = await approve_next_csr(e2e.testbed, e2e.client, name, seen)
    assert csr["spec"]["usages"] == ["digital signature", "server auth"]
    assert csr["spec"]["expirationSeconds"] == 600
    assert csr["spec"]["username"] == f"system:node:{name}"

    async def verified() -> x509.Certificate | None:
        try:
            return await presented_cert(port, ca)
        except ssl.SSLCertVerificationError:
            return None

    cert = await wait_for(verified, 60, 0.5, "the cluster-signed certificate served")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"system:node:{name}"
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [
        "system:nodes"
    ]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [name]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert (cfg.server.cert_dir / CURRENT_FILE).exists()

    # a connection opened on this certificate, kept busy across the rotation
    pki = e2e.testbed.pki
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(pki.apiserver_kubelet_client.cert), str(pki.apiserver_kubelet_client.key))
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    old_peer = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert await _get(r, w) == 200

    approver = asyncio.create_task(approve_next_csr(e2e.testbed, e2e.client, name, seen))
    try:

        async def rotated() -> x509.Certificate | None:
            assert await _get(r, w) == 200  # the old connection keeps answering
            new = await presented_cert(port, ca)
            return new if new.serial_number != cert.serial_number else None

        new = await wait_for(rotated, 90, 1.0, "a rotated certificate on new connections")
    finally:
        approver.cancel()
        await asyncio.gather(approver, return_exceptions=True)
    assert new.subject == cert.subject and new.not_valid_after_utc >= cert.not_valid_after_utc
    assert await _get(r, w) == 200
    assert w.get_extra_info("ssl_object").getpeercert(binary_form=True) == old_peer
    w.close()
