"""The kubelet API under misuse: hypothesis-fuzzed raw HTTPS requests against a running warmlet.

The node runs with Webhook authorization (TokenReview + SubjectAccessReview against the bed's
kube-apiserver). Requests are written byte for byte on a TLS socket (no client-side URL
normalization): odd paths (``..``, ``%2e%2e``, encoded slashes, NUL), huge query strings, bad
log parameters, unknown methods, bodies far above the limit (announced, chunked), many and huge
headers, and four identities: the apiserver's kubelet client cert (authorized), a service account
token without RBAC (authenticated, unauthorized), a garbage token and no credentials. A
self-signed client cert claiming system:masters is tried as well, and a slowloris client.
Checked: never a 5xx (only the deliberate 501 of exec/attach/portForward/run), never a hang (client
timeout), never a byte of a file outside the log root, 401/403 exactly by identity, a message in
every refusal, and the node healthy afterwards.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import socket
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from e2e_helpers import E2E, pod_spec, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.faults

CLIENT_TIMEOUT = 20.0  # far above any legitimate answer; a hang fails the test
LOG_LINES = ("fuzz-log-line-one", "fuzz-log-line-two")
NOT_SUPPORTED = ("/exec/", "/attach/", "/portForward/", "/run/")


@dataclass
class Target:
    port: int
    ns: str
    pod: str
    admin: tuple[str, str]  # cert, key (system:masters)
    sa_token: str
    rogue: tuple[str, str]  # self-signed cert claiming system:masters
    stats: Counter[str] = field(default_factory=Counter)
    sent: int = 0


def _ctx(cert: tuple[str, str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # warmlet's self-signed serving cert
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def raw_request(
    port: int, data: bytes, cert: tuple[str, str] | None, timeout: float = CLIENT_TIMEOUT
) -> bytes:
    """Send ``data`` as is over TLS, return everything the server sends until it closes or times out.

    Raises TimeoutError when the server neither answers nor closes in time (a hang).
    """
    deadline = time.monotonic() + timeout
    out = b""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw,
        _ctx(cert).wrap_socket(raw) as s,
    ):
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server may answer and close before reading an oversized request
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete answer within {timeout}s: {out[:200]!r}")
            s.settimeout(left)
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                break
            except TimeoutError:
                if _complete(out):
                    break
                raise
            if not chunk:
                break
            out += chunk
            if _complete(out):
                break
    return out


def _complete(resp: bytes) -> bool:
    """Headers seen and a Content-Length body or a chunked terminator received."""
    head, sep, body = resp.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        return body.endswith(b"0\r\n\r\n")
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def status_of(resp: bytes) -> tuple[int, bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].split(b" ")
    assert len(first) >= 2 and first[0].startswith(b"HTTP/1."), resp[:300]
    return int(first[1]), body


# ------------------------------------------------------------------------------------ strategies

SEGMENTS = st.one_of(
    st.sampled_from(
        [
            "..",
            "%2e%2e",
            "%2E%2E",
            ".%2e",
            "%2f",
            "..%2f..%2fetc%2fpasswd",
            "..%252f..%252fetc",
            "%00",
            "a%00b",
            "etc",
            "passwd",
            "%2fetc%2fpasswd",
            "\u00e9",
            "%ff%fe",
            "a" * 300,
            "main",
            "",
        ]
    ),
    st.text(min_size=1, max_size=30).map(lambda t: quote(t, safe="")),
)
LOG_PARAMS = st.dictionaries(
    st.sampled_from(
        [
            "tailLines",
            "limitBytes",
            "sinceSeconds",
            "sinceTime",
            "timestamps",
            "previous",
            "follow",
            "stream",
            "tail",
            "x",
        ]
    ),
    st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.sampled_from(["", "-1", "0", "1e3", "0x10", " 5", "5 ", "1_0", "null", "true", "NaN", "9" * 5000]),
        st.sampled_from(
            [
                "2026-01-01T00:00:00Z",
                "2026-13-45T99:99:99Z",
                "yesterday",
                "1970-01-01T00:00:00.999999999+23:59",
            ]
        ),
        st.sampled_from(["All", "Stdout", "Stderr", "stdout", "Both"]),
        st.text(max_size=20),
    ),
    max_size=5,
)


VALID_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "tailLines": st.integers(0, 5).map(str),
        "limitBytes": st.integers(1, 64).map(str),
        "sinceSeconds": st.integers(1, 10**9).map(str),
        "timestamps": st.sampled_from(["true", "false", "1", "0"]),
        "follow": st.just("false"),
    },
)


@st.composite
def requests(draw: st.DrawFn, ns: str, pod: str) -> dict[str, Any]:
    method = draw(
        st.sampled_from(
            ["GET"] * 6 + ["HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND", "get", "FOO"]
        )
    )
    kind = draw(st.sampled_from(["logs", "logs", "logs", "endpoint", "random"]))
    if kind == "logs":
        # mostly the real pod (so the log parameters reach the reader), one odd segment at a time
        real = [ns, pod, "main"]
        parts = [draw(st.one_of(st.just(x), st.just(x), st.just(x), SEGMENTS)) for x in real]
        extra = draw(st.lists(SEGMENTS, max_size=3)) if draw(st.integers(0, 3)) == 0 else []
        path = "/containerLogs/" + "/".join(parts + extra)
    elif kind == "endpoint":
        path = draw(
            st.sampled_from(
                [
                    "/pods",
                    "/runningpods/",
                    "/stats/summary",
                    "/metrics",
                    "/metrics/resource",
                    "/healthz",
                    "/logs/",
                    "/logs/../../etc/passwd",
                    "/logs/%2e%2e/%2e%2e/etc/passwd",
                    "/exec/x/y/z",
                    "/run/a/b/c",
                    "/configz",
                    "/debug/pprof/",
                    "//containerLogs//",
                    "/containerLogs/../../../../etc/passwd",
                    "/",
                ]
            )
        )
    else:
        path = "/" + "/".join(draw(st.lists(SEGMENTS, max_size=5)))
    params = draw(st.one_of(VALID_PARAMS, LOG_PARAMS))
    query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params.items())
    if draw(st.integers(0, 9)) == 0:
        query += "&pad=" + "x" * draw(st.sampled_from([1000, 8000, 20000, 100000]))
    body_kind = draw(st.sampled_from(["none"] * 6 + ["small", "announced-huge", "chunked-huge"]))
    n_headers = draw(st.sampled_from([0, 0, 0, 5, 90, 150, 300]))
    header_size = draw(st.sampled_from([10, 10, 10, 4000, 9000, 30000]))
    ident = draw(st.sampled_from(["admin", "admin", "admin", "sa", "badtoken", "none", "weirdtoken"]))
    return {
        "method": method,
        "path": path,
        "query": query,
        "body": body_kind,
        "n_headers": n_headers,
        "header_size": header_size,
        "ident": ident,
    }


def build(req: dict[str, Any], t: Target) -> tuple[bytes, tuple[str, str] | None]:
    target = req["path"] + (("?" + req["query"]) if req["query"] else "")
    lines = [f"{req['method']} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    cert: tuple[str, str] | None = None
    if req["ident"] == "admin":
        cert = t.admin
    elif req["ident"] == "sa":
        lines.append(f"Authorization: Bearer {t.sa_token}")
    elif req["ident"] == "badtoken":
        lines.append("Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.not-a-token.sig")
    elif req["ident"] == "weirdtoken":
        lines.append("Authorization: Bearer \u00ff\u00fe tok\ten")
    for i in range(req["n_headers"]):
        lines.append(f"X-Fuzz-{i}: {'v' * (req['header_size'] if i == 0 else 10)}")
    if req["n_headers"] == 0 and req["header_size"] > 10:
        lines.append(f"X-Big: {'v' * req['header_size']}")
    body = b""
    if req["body"] == "small":
        lines.append("Content-Length: 5")
        body = b"hello"
    elif req["body"] == "announced-huge":
        lines.append("Content-Length: 1073741824")  # 1 GiB announced, 64 KiB sent
        body = b"z" * 65536
    elif req["body"] == "chunked-huge":
        lines.append("Transfer-Encoding: chunked")
        chunk = b"z" * 32768
        body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 8  # 256 KiB, never terminated
    head = "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    return head + body, cert


def check(req: dict[str, Any], resp: bytes, t: Target) -> int:
    status, body = status_of(resp)
    t.stats[str(status)] += 1
    t.sent += 1
    path = req["path"]
    if status >= 500:
        assert status == 501 and path.startswith(NOT_SUPPORTED), (status, req, body[:300])
    if status >= 400 and req["method"] != "HEAD":
        assert body.strip(), ("refusal without a message", status, req)
    assert b"root:x:0:0" not in body and b"root:*:" not in body, ("a host file was served", req)
    if req["ident"] in ("none", "badtoken", "weirdtoken"):
        # refused before identity (bad method, body, request head) or 401; never any content
        assert status in (400, 401, 405, 413, 431), (status, req, body[:200])
    elif req["ident"] == "sa":
        assert status in (400, 403, 405, 413, 431), (status, req, body[:200])
    if status == 200 and path.startswith("/containerLogs/") and req["method"] == "GET":
        head = resp.partition(b"\r\n\r\n")[0].lower()
        data = dechunk(body) if b"transfer-encoding: chunked" in head else body
        for line in data.decode(errors="replace").splitlines():
            # only the pod's own lines, maybe behind a timestamp, maybe cut by limitBytes
            stamped = TS_LINE.match(line)
            rest = stamped.group(1) if stamped else line
            ok = any(rest in ll or ll in rest for ll in LOG_LINES) or TS_PREFIX.match(line)
            assert ok, ("served something that is not the pod's log", line[:200], req)
    return status


TS_LINE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z ?(.*)$")  # timestamps=true
TS_PREFIX = re.compile(r"^[0-9]{1,4}(-[0-9T:.Z+-]*)?$")  # a timestamp cut by limitBytes


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def self_signed(dir_: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "system:admin"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    c, k = dir_ / "rogue.crt", dir_ / "rogue.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(c), str(k)


async def _setup(e2e: E2E) -> Target:
    cfg = e2e.config()
    cfg.server.authorization_mode = "Webhook"
    cfg.server.idle_timeout_seconds = 3.0
    await e2e.start(cfg)
    node = cfg.node.name
    ns = await e2e.namespace("kapi")
    cmd = f"echo {LOG_LINES[0]}; echo {LOG_LINES[1]} >&2"
    await e2e.client.post(
        f"/api/v1/namespaces/{ns}/pods",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "logged"},
            "spec": pod_spec(node, cmd, e2e.busybox),
        },
    )

    async def done() -> bool:
        return (await e2e.pod(ns, "logged")).get("status", {}).get("phase") == "Succeeded"

    await wait_for(done, 180, 0.5, "the logged pod Succeeded")
    await e2e.client.post(f"/api/v1/namespaces/{ns}/serviceaccounts", {"metadata": {"name": "nobody"}})
    tr = await e2e.client.post(
        f"/api/v1/namespaces/{ns}/serviceaccounts/nobody/token",
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600},
        },
    )
    obj = await e2e.client.get(f"/api/v1/nodes/{node}")
    port = int(obj["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"])
    pki = e2e.testbed.pki
    return Target(
        port=port,
        ns=ns,
        pod="logged",
        admin=(str(pki.apiserver_kubelet_client.cert), str(pki.apiserver_kubelet_client.key)),
        sa_token=tr["status"]["token"],
        rogue=self_signed(e2e.tmp),
    )


def _get(t: Target, path: str, cert: tuple[str, str] | None, headers: str = "") -> tuple[int, bytes]:
    data = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode()
    return status_of(raw_request(t.port, data, cert))


def fixed_cases(t: Target, logs: str) -> tuple[str, float]:
    """The fixed cases: each identity with its exact code, traversal, bad params, rogue cert, 413,
    slowloris. Blocking sockets: run in a thread (warmlet serves on the test's event loop)."""
    assert _get(t, logs, t.admin)[0] == 200
    assert LOG_LINES[0].encode() in _get(t, logs, t.admin)[1]
    assert _get(t, logs, None) == (401, b"Unauthorized")
    assert _get(t, logs, None, "Authorization: Bearer nope\r\n")[0] == 401
    status, body = _get(t, logs, None, f"Authorization: Bearer {t.sa_token}\r\n")
    assert status == 403 and b"Forbidden (user=system:serviceaccount:" in body, body
    for bad in ("%2e%2e", "..%2f..%2fetc", "a%00b", "%2fetc%2fpasswd"):
        assert _get(t, f"/containerLogs/{t.ns}/{bad}/main", t.admin)[0] == 400, bad
    assert _get(t, f"{logs}?tailLines=abc", t.admin)[0] == 400
    assert _get(t, f"{logs}?limitBytes=-5", t.admin)[0] == 422
    try:
        resp = raw_request(t.port, f"GET {logs} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), t.rogue)
        # TLS 1.3: the server checks the client cert after the client's handshake is done; an
        # untrusted one ends the connection with an alert (nothing to read) before any HTTP
        rogue = "TLS refused" if not resp else f"HTTP {status_of(resp)[0]}"
        assert not resp or status_of(resp)[0] == 401, "a self-signed client cert was trusted"
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        rogue = "TLS refused"
    status, body = status_of(
        raw_request(
            t.port,
            b"POST /exec/a/b/c HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n" + b"z" * 1024,
            t.admin,
        )
    )
    assert status == 413 and b"limited to" in body, (status, body)

    # Slowloris: half a request head, then silence: closed by the server (idle_timeout 3 s).
    t0 = time.monotonic()
    with (
        socket.create_connection(("127.0.0.1", t.port), timeout=60) as raw,
        _ctx(t.admin).wrap_socket(raw) as s,
    ):
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        s.settimeout(60)
        try:
            leftover = s.recv(1024)
        except (ConnectionResetError, ssl.SSLError):
            leftover = b""
    slow_closed_after = time.monotonic() - t0
    assert slow_closed_after < 60 and not leftover.startswith(b"HTTP/1.1 200"), leftover

    return rogue, slow_closed_after


@pytest.mark.reliability(
    fault="hypothesis-fuzzed raw HTTPS requests to the kubelet API: traversal paths, encoded slashes, NUL, "
    "huge queries/headers/bodies, bad log parameters, unknown methods, four identities",
    checked="never 5xx (bar exec's 501), never a hang, no file outside the log root; 401/403/400/404/405/413 "
    "by case with a message; the API still serves logs afterwards",
)
async def test_kubelet_api_fuzzed_requests(e2e: E2E, reliability: Any) -> None:
    t = await _setup(e2e)
    logs = f"/containerLogs/{t.ns}/{t.pod}/main"

    rogue, slow_closed_after = await asyncio.to_thread(fixed_cases, t, logs)

    # The fuzz: hypothesis drives raw requests from a thread (warmlet runs on this loop).
    timeouts: list[dict[str, Any]] = []

    fixed = settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

    def send(req: dict[str, Any]) -> None:
        data, cert = build(req, t)
        try:
            resp = raw_request(t.port, data, cert)
        except TimeoutError:
            timeouts.append(req)
            raise
        check(req, resp, t)

    @settings(fixed, max_examples=250)
    @given(req=requests(t.ns, t.pod))
    def fuzz(req: dict[str, Any]) -> None:
        send(req)

    # Authorized GETs of the real log with fuzzed parameters: what the log reader gets to see
    # (follow on a finished container must end, limits/tails/times must never read elsewhere).
    @settings(fixed, max_examples=150)
    @given(params=st.one_of(VALID_PARAMS, LOG_PARAMS))
    def fuzz_params(params: dict[str, str]) -> None:
        query = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in params.items())
        path = f"/containerLogs/{t.ns}/{t.pod}/main"
        send(
            {
                "method": "GET",
                "path": path,
                "query": query,
                "body": "none",
                "n_headers": 0,
                "header_size": 10,
                "ident": "admin",
            }
        )

    t_fuzz = time.monotonic()
    await asyncio.to_thread(fuzz)
    await asyncio.to_thread(fuzz_params)
    fuzz_seconds = time.monotonic() - t_fuzz
    assert not timeouts

    # Healthy afterwards: logs, healthz, node Ready.
    assert (await asyncio.to_thread(_get, t, logs, t.admin))[0] == 200
    assert await asyncio.to_thread(_get, t, "/healthz", t.admin) == (200, b"ok")
    ready = await e2e.ready_condition(e2e.nodes[0].cfg.node.name)
    assert ready.get("status") == "True", ready
    codes = ", ".join(f"{k}x{v}" for k, v in sorted(t.stats.items()))
    reliability.detail(f"{t.sent:,} fuzzed requests, 0 5xx (bar 501 for exec), 0 hangs; codes: {codes}")
    reliability.detail(f"rogue self-signed cert: {rogue}; slowloris closed after {slow_closed_after:.0f} s")
    print(f"fuzz: {t.sent} requests in {fuzz_seconds:.1f}s codes={codes}")
