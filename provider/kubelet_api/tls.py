"""TLS for the kubelet API: a serving certificate from files, or self-signed at start.

Like kubelet without --tls-cert-file, warmlet creates a small CA and a serving
certificate for the node's names and addresses and keeps them in cert_dir so the CA
stays stable across restarts. Client certificates, when a client CA is configured, are
requested but optional (bearer tokens are the other way in).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_FILE = "warmlet-ca.crt"
CA_KEY_FILE = "warmlet-ca.key"
CERT_FILE = "warmlet.crt"
KEY_FILE = "warmlet.key"


@dataclass(frozen=True)
class ServingCert:
    cert_file: Path
    key_file: Path
    ca_file: Path | None  # None when the certificate came from the operator


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_certificate(
    common_name: str,
    issuer_cert: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    is_ca: bool = False,
    organizations: tuple[str, ...] = (),
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
    server: bool = False,
    client: bool = False,
    days: int = 365,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """One ECDSA P-256 certificate (self-signed when no issuer): for CAs, servers and clients."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    subject = x509.Name(attrs)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())
    return cert, key


def write_pair(
    cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
) -> None:
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _key_pem(key), private=True)


def _still_valid(path: Path, names: set[str], ips: set[str]) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    if cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    return names <= have_dns and ips <= have_ips


def ensure_serving_cert(
    cert_file: Path | None,
    key_file: Path | None,
    cert_dir: Path,
    node_name: str,
    addresses: tuple[str, ...] = ("127.0.0.1",),
) -> ServingCert:
    """Use the configured pair, or (re)generate a CA and serving cert in cert_dir when needed."""
    if cert_file is not None and key_file is not None:
        return ServingCert(Path(cert_file), Path(key_file), None)
    cert_dir = Path(cert_dir)
    cert_dir.mkdir(parents=True, exist_ok=True)
    dns = {node_name, socket.gethostname(), "localhost"}
    ips: set[str] = set()
    for a in addresses:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            dns.add(a)
        else:
            if a not in ("0.0.0.0", "::"):
                ips.add(a)
    ips.add("127.0.0.1")
    ca_path, ca_key_path = cert_dir / CA_FILE, cert_dir / CA_KEY_FILE
    crt_path, key_path = cert_dir / CERT_FILE, cert_dir / KEY_FILE
    if _still_valid(crt_path, dns, ips) and key_path.exists() and ca_path.exists():
        return ServingCert(crt_path, key_path, ca_path)
    ca_cert: x509.Certificate | None = None
    ca_key: ec.EllipticCurvePrivateKey | None = None
    if ca_path.exists() and ca_key_path.exists():
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
            loaded = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
            ca_key = loaded if isinstance(loaded, ec.EllipticCurvePrivateKey) else None
        except (OSError, ValueError):
            ca_cert = ca_key = None
    if (
        ca_cert is None
        or ca_key is None
        or ca_cert.not_valid_after_utc < dt.datetime.now(dt.UTC) + dt.timedelta(30)
    ):
        ca_cert, ca_key = issue_certificate(f"{node_name}-ca", None, None, is_ca=True, days=3650)
        write_pair(ca_cert, ca_key, ca_path, ca_key_path)
    cert, key = issue_certificate(
        node_name, ca_cert, ca_key, dns_names=tuple(sorted(dns)), ip_addresses=tuple(sorted(ips)), server=True
    )
    write_pair(cert, key, crt_path, key_path)
    log.info("generated kubelet serving certificate cert=%s ca=%s", crt_path, ca_path)
    return ServingCert(crt_path, key_path, ca_path)


def server_ssl_context(serving: ServingCert, client_ca_file: Path | None) -> ssl.SSLContext:
    """TLS >= 1.2; client certificates requested and verified against the client CA if set."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(serving.cert_file), str(serving.key_file))
    if client_ca_file is not None:
        ctx.load_verify_locations(cafile=str(client_ca_file))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
