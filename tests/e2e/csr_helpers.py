"""Helpers of the serving-certificate e2e tests: an operator approving kubelet-serving CSRs, the
certificate a TLS server presents, and a clock that runs faster (rotation within seconds)."""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from provider.kubeclient import KubeClient
from provider.kubelet_api.serving_csr import CSR_PATH, SIGNER
from testbed.wait import wait_for

JSON = dict[str, Any]


def requested_cn(csr: JSON) -> str:
    req = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
    return str(req.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


async def approve_next_csr(
    testbed: Any, client: KubeClient, node: str, seen: set[str], within: float = 90
) -> JSON:
    """Wait for a new pending kubelet-serving CSR of ``node`` and approve it as an operator does
    (``kubectl certificate approve``)."""

    async def pending() -> JSON | None:
        for c in (await client.get(CSR_PATH))["items"]:
            name = c["metadata"]["name"]
            if (
                name in seen
                or c["spec"].get("signerName") != SIGNER
                or requested_cn(c) != f"system:node:{node}"
            ):
                continue
            if not (c.get("status") or {}).get("conditions"):
                return dict(c)
        return None

    csr = await wait_for(pending, within, 0.5, f"a pending kubelet-serving CSR of {node}")
    seen.add(csr["metadata"]["name"])
    await asyncio.to_thread(testbed.kubectl, "certificate", "approve", csr["metadata"]["name"])
    return csr


async def presented_cert(port: int, cafile: Path | None = None) -> x509.Certificate:
    """The certificate 127.0.0.1:port presents; with ``cafile`` the chain and the IP SAN are verified
    (ssl.SSLCertVerificationError otherwise)."""
    if cafile is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(cafile))
    _, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1")
    der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
    w.close()
    return x509.load_der_x509_certificate(der)


class ScaledClock:
    """Wall and monotonic time running ``factor`` times faster than real time (sleeps shorter):
    a 600 s certificate reaches its 70-90 % rotation deadline within seconds."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self._wall0, self._mono0 = time.time(), time.monotonic()

    def time(self) -> float:
        return self._wall0 + (time.time() - self._wall0) * self.factor

    def monotonic(self) -> float:
        return self._mono0 + (time.monotonic() - self._mono0) * self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)
