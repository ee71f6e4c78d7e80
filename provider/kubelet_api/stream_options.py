"""Pure parts of the kubelet API's interactive routes: query and header parsing, the request head
sent to the runtime's streaming server and the parsing of its answer.

Kept apart from the I/O (``streaming.py``) so every rule here has exhaustive unit tests. The
rules are kubelet v1.36's: remotecommand ``NewOptions`` (stream flags ``stdin``/``stdout``/
``stderr``/``tty`` = ``"1"``, at least one stream, no stderr with a tty), portforward
``NewV4Options`` (``port`` parameters, WebSocket requests only), ``httpstream.IsUpgradeRequest``
and ``wsstream.IsWebSocketRequest``, and getRun's ``cmd`` split on single spaces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

Query = Mapping[str, Sequence[str]]
Headers = Iterable[tuple[str, str]]

# The WebSocket subprotocol of kubectl's port-forward tunnel (SPDY inside WebSocket).
PORT_FORWARD_TUNNEL_PROTOCOL = "SPDY/3.1+portforward.k8s.io"
# Request headers never passed on to the runtime's streaming server: the runtime is reached with
# its own Host; the caller's credentials are warmlet's business only; upgrade requests carry no
# body; proxy hop-by-hop headers end here.
_DROPPED = frozenset(
    {
        "host",
        "authorization",
        "content-length",
        "transfer-encoding",
        "proxy-authorization",
        "proxy-connection",
    }
)


class StreamParamError(ValueError):
    """A query kubelet answers with 400 Bad Request."""


@dataclass(frozen=True)
class StreamOptions:
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def _first(query: Query, key: str) -> str:
    values = query.get(key) or ()
    return values[0] if values else ""


def parse_stream_options(query: Query) -> StreamOptions:
    """remotecommand's NewOptions: flags are on when exactly ``"1"``; a tty has no stderr."""
    tty = _first(query, "tty") == "1"
    stdin = _first(query, "input") == "1"
    stdout = _first(query, "output") == "1"
    stderr = _first(query, "error") == "1" and not tty
    if not (stdin or stdout or stderr):
        raise StreamParamError("you must specify at least 1 of stdin, stdout, stderr")
    return StreamOptions(stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)


def exec_command(query: Query) -> list[str]:
    """The ``command`` parameters, in order (kubelet passes them through, even none)."""
    return list(query.get("command") or ())


def run_command(query: Query) -> list[str]:
    """getRun: the single ``cmd`` parameter split on single spaces (empty parts kept, as Go's
    strings.Split does)."""
    return _first(query, "cmd").split(" ")


def _values(headers: Headers, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name]


def is_upgrade_request(headers: Headers) -> bool:
    """httpstream.IsUpgradeRequest: some Connection header mentions ``upgrade``."""
    return any("upgrade" in v.lower() for v in _values(headers, "connection"))


def is_websocket_request(headers: Headers) -> bool:
    """wsstream.IsWebSocketRequest: an upgrade request to ``websocket``."""
    headers = list(headers)
    upgrade = _values(headers, "upgrade")
    return bool(upgrade) and upgrade[0].strip().lower() == "websocket" and is_upgrade_request(headers)


def is_tunneling_request(headers: Headers) -> bool:
    """wsstream.IsWebSocketRequestWithTunnelingProtocol: port-forward SPDY tunnelled in WebSocket."""
    headers = list(headers)
    if not is_websocket_request(headers):
        return False
    offered = {p.strip() for v in _values(headers, "sec-websocket-protocol") for p in v.split(",")}
    return PORT_FORWARD_TUNNEL_PROTOCOL in offered


def parse_ports(query: Query, headers: Headers) -> list[int]:
    """portforward.NewV4Options: only a (non-tunnelling) WebSocket request names its ports in the
    query (``port=80&port=81`` or ``port=80,81``); SPDY clients name them per stream."""
    headers = list(headers)
    if not is_websocket_request(headers) or is_tunneling_request(headers):
        return []
    raw = query.get("port") or ()
    if not raw:
        raise StreamParamError('query parameter "port" is required')
    ports: list[int] = []
    for value in raw:
        if not value:
            raise StreamParamError('query parameter "port" cannot be empty')
        for part in value.split(","):
            if not part.isascii() or not part.isdigit() or int(part) > 65535:
                raise StreamParamError(f'unable to parse "{value}" as a port')
            if int(part) < 1:
                raise StreamParamError(f'port "{value}" must be > 0')
            ports.append(int(part))
    return ports


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    target: str  # path and query of the request line

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_stream_url(url: str) -> Upstream:
    """The runtime's session URL (http or https, absolute)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"unsupported streaming URL {url!r}: not an absolute http(s) URL")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Upstream(parts.scheme, parts.hostname, port, target)


def request_head(method: str, upstream: Upstream, headers: Headers, forwarded_for: str) -> bytes:
    """The request the upgrade-aware proxy sends to the runtime: the client's method and headers
    (minus ``_DROPPED``) to the session URL, with the runtime's Host and X-Forwarded-For."""
    lines = [f"{method} {upstream.target} HTTP/1.1", f"Host: {upstream.authority}"]
    prior: list[str] = []
    for k, v in headers:
        name = k.lower()
        if name in _DROPPED or "\r" in v or "\n" in v:
            continue
        if name == "x-forwarded-for":
            prior.append(v)
            continue
        lines.append(f"{k}: {v}")
    if forwarded_for:
        lines.append("X-Forwarded-For: " + ", ".join([*prior, forwarded_for]))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]

    def get(self, name: str) -> str | None:
        vals = _values(self.headers, name.lower())
        return vals[0] if vals else None


def parse_response_head(raw: bytes) -> ResponseHead:
    """Status line and headers of the runtime's answer (``raw`` ends at the blank line)."""
    text = raw.decode("latin-1")
    lines = text.split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
        raise ValueError(f"malformed response from the streaming server: {lines[0][:80]!r}")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError(f"malformed header from the streaming server: {line[:80]!r}")
        headers.append((name, value.strip()))
    return ResponseHead(int(status_line[1]), status_line[2] if len(status_line) > 2 else "", headers)
