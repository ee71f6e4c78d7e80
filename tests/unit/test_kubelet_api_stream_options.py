"""Pure rules of the interactive routes (kubelet's remotecommand NewOptions, portforward
NewV4Options, IsUpgradeRequest/IsWebSocketRequest, getRun's cmd split) and the proxy's heads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.kubelet_api.stream_options import (
    PORT_FORWARD_TUNNEL_PROTOCOL,
    StreamOptions,
    StreamParamError,
    exec_command,
    is_tunneling_request,
    is_upgrade_request,
    is_websocket_request,
    parse_ports,
    parse_response_head,
    parse_stream_options,
    parse_stream_url,
    request_head,
    run_command,
)

pytestmark = pytest.mark.unit

FLAGS = st.sampled_from(["", "1", "0", "true", "01"])


@given(tty=FLAGS, stdin=FLAGS, stdout=FLAGS, stderr=FLAGS)
def test_stream_options_match_kubelet(tty: str, stdin: str, stdout: str, stderr: str) -> None:
    query = {k: [v] for k, v in (("tty", tty), ("input", stdin), ("output", stdout), ("error", stderr)) if v}
    want = StreamOptions(
        stdin=stdin == "1", stdout=stdout == "1", stderr=stderr == "1" and tty != "1", tty=tty == "1"
    )
    if not (want.stdin or want.stdout or want.stderr):
        with pytest.raises(StreamParamError, match="at least 1 of stdin, stdout, stderr"):
            parse_stream_options(query)
    else:
        assert parse_stream_options(query) == want


def test_first_value_wins_and_commands_keep_order() -> None:
    assert parse_stream_options({"output": ["1", "0"]}).stdout
    assert not parse_stream_options({"output": ["1"], "input": ["0", "1"]}).stdin
    assert exec_command({"command": ["sh", "-c", "a b"]}) == ["sh", "-c", "a b"]
    assert exec_command({}) == []
    assert run_command({"cmd": ["ls  -l"]}) == ["ls", "", "-l"]
    assert run_command({}) == [""]


WS = [("Connection", "keep-alive, Upgrade"), ("Upgrade", "websocket")]


def test_upgrade_and_websocket_detection() -> None:
    assert is_upgrade_request([("connection", "Upgrade")])
    assert is_upgrade_request([("Connection", "keep-alive"), ("Connection", "upgrade")])
    assert not is_upgrade_request([("Connection", "keep-alive"), ("Upgrade", "websocket")])
    assert is_websocket_request(WS) and is_websocket_request(
        [("Connection", "upgrade"), ("Upgrade", "WebSocket")]
    )
    assert not is_websocket_request([("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")])
    tunnel = [*WS, ("Sec-WebSocket-Protocol", f"v4.channel.k8s.io, {PORT_FORWARD_TUNNEL_PROTOCOL}")]
    assert is_tunneling_request(tunnel) and not is_tunneling_request(WS)


def test_ports_only_for_websocket_requests() -> None:
    assert parse_ports({"port": ["80"]}, [("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]) == []
    assert parse_ports({}, [*WS, ("Sec-WebSocket-Protocol", PORT_FORWARD_TUNNEL_PROTOCOL)]) == []
    assert parse_ports({"port": ["80,8080", "9090"]}, WS) == [80, 8080, 9090]
    assert parse_ports({"port": ["080"]}, WS) == [80]
    for query, msg in (
        ({}, 'query parameter "port" is required'),
        ({"port": [""]}, 'query parameter "port" cannot be empty'),
        ({"port": ["0"]}, 'port "0" must be > 0'),
        ({"port": ["65536"]}, 'unable to parse "65536" as a port'),
        ({"port": ["80,"]}, 'unable to parse "80," as a port'),
        ({"port": ["-1"]}, 'unable to parse "-1" as a port'),
        ({"port": ["\uff18\uff10"]}, "unable to parse"),
    ):
        with pytest.raises(StreamParamError) as e:
            parse_ports(query, WS)
        assert msg in str(e.value)


@given(st.lists(st.integers(1, 65535), min_size=1, max_size=5))
def test_ports_roundtrip(ports: list[int]) -> None:
    assert parse_ports({"port": [",".join(map(str, ports))]}, WS) == ports


def test_stream_url_and_request_head() -> None:
    up = parse_stream_url("http://127.0.0.1:41234/exec/AbC?x=1")
    assert (up.scheme, up.host, up.port, up.target, up.authority) == (
        "http",
        "127.0.0.1",
        41234,
        "/exec/AbC?x=1",
        "127.0.0.1:41234",
    )
    assert parse_stream_url("https://[::1]/p").authority == "[::1]"
    for bad in ("/exec/abc", "ftp://h/x", "http:///x"):
        with pytest.raises(ValueError):
            parse_stream_url(bad)
    head = request_head(
        "POST",
        up,
        [
            ("Host", "apiserver"),
            ("Authorization", "Bearer secret"),
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "v3.channel.k8s.io"),
            ("Content-Length", "0"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("X-Evil", "a\r\nInjected: 1"),
        ],
        "10.0.0.2",
    ).decode()
    assert head == (
        "POST /exec/AbC?x=1 HTTP/1.1\r\nHost: 127.0.0.1:41234\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        "X-Stream-Protocol-Version: v4.channel.k8s.io\r\nX-Stream-Protocol-Version: v3.channel.k8s.io\r\n"
        "X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n\r\n"
    )


def test_response_head() -> None:
    head = parse_response_head(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    )
    assert (head.status, head.reason, head.get("upgrade")) == (101, "Switching Protocols", "SPDY/3.1")
    assert head.get("missing") is None
    assert parse_response_head(b"HTTP/1.1 404\r\n\r\n").status == 404
    for bad in (b"SPDY 101 x\r\n\r\n", b"HTTP/1.1 abc x\r\n\r\n", b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n"):
        with pytest.raises(ValueError):
            parse_response_head(bad)


@given(st.binary(max_size=300))
def test_response_head_never_crashes_otherwise(raw: bytes) -> None:
    try:
        parse_response_head(raw + b"\r\n\r\n")
    except ValueError:
        pass
