"""The interactive benchmark's pure parts: the exit status of a v5.channel.k8s.io exec session,
throughput arithmetic and the pod it serves the file from."""

from __future__ import annotations

import json

import pytest

from bench.interactive import HTTP_PORT, STATUS_CHANNEL, exec_status, httpd_pod, mb_per_second

pytestmark = pytest.mark.unit


def _frame(channel: int, payload: bytes) -> bytes:
    return bytes([channel]) + payload


def test_exec_status_is_read_from_the_error_channel_only() -> None:
    ok = {"metadata": {}, "status": "Success"}
    frames = [
        _frame(1, b"hello\n"),
        _frame(2, b'{"status": "Failure"}'),
        _frame(STATUS_CHANNEL, json.dumps(ok).encode()),
    ]
    assert exec_status(frames) == ok


def test_exec_status_none_without_a_status_frame_or_with_garbage() -> None:
    assert exec_status([]) is None
    assert exec_status([_frame(1, b"out")]) is None
    assert exec_status([_frame(STATUS_CHANNEL, b"not json"), _frame(STATUS_CHANNEL, b"")]) is None
    assert exec_status([_frame(STATUS_CHANNEL, b"[1, 2]")]) is None


def test_mb_per_second() -> None:
    assert mb_per_second(100 * 1048576, 2.0) == 50.0
    assert mb_per_second(1048576, 0) == 0.0


def test_httpd_pod_serves_the_file_and_its_checksum_and_is_pinned() -> None:
    pod = httpd_pod("h", "node-a", "busybox:x", 7)
    spec = pod["spec"]
    assert spec["nodeName"] == "node-a" and "nodeSelector" not in spec
    c = spec["containers"][0]
    assert c["name"] == "app" and c["image"] == "busybox:x"
    script = c["command"][-1]
    assert "count=7" in script and "blob.sha256" in script and f"-p {HTTP_PORT}" in script
    assert c["readinessProbe"]["httpGet"] == {"path": "/blob.sha256", "port": HTTP_PORT}
