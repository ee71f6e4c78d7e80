"""In cluster the ServiceAccount token file is rotated by the kubelet: warmlet re-reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from provider import kubeclient
from provider.kubeclient import KubeClient

pytestmark = pytest.mark.unit


def test_token_file_is_reread_and_clones_follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    c = KubeClient("https://127.0.0.1:6443", False, token="first", token_file=str(token))
    assert c._auth() == {"Authorization": "Bearer first"}
    token.write_text("second\n")
    assert c._auth() == {"Authorization": "Bearer first"}  # not before the re-read interval
    monkeypatch.setattr(kubeclient, "TOKEN_REREAD_SECONDS", 0.0)
    assert c._auth() == {"Authorization": "Bearer second"}
    clone = c.clone(max_connections=2)
    token.write_text("third")
    assert clone._auth() == {"Authorization": "Bearer third"}
    token.unlink()  # unreadable for a moment: keep the last token
    assert clone._auth() == {"Authorization": "Bearer third"}


def test_static_token_uses_the_session_header() -> None:
    assert KubeClient("https://127.0.0.1:6443", False, token="t")._auth() == {}
