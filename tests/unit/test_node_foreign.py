"""A Node of warmlet's name that another kubelet or provider reports is never taken over."""

from __future__ import annotations

import pytest

from provider.node_object import foreign_owner

pytestmark = pytest.mark.unit


def node(**info: str) -> dict[str, object]:
    return {"metadata": {"name": "n"}, "status": {"nodeInfo": info}} if info else {"metadata": {"name": "n"}}


def test_foreign_owner() -> None:
    assert foreign_owner(node()) is None  # pre-created, no status: ours to take
    assert foreign_owner(node(osImage="warmlet 0.1.0", kubeletVersion="v1.36.3-warmlet")) is None
    assert foreign_owner(node(osImage="", kubeletVersion="")) is None
    other = foreign_owner(node(osImage="Debian GNU/Linux 12", kubeletVersion="v1.36.3"))
    assert other is not None and "Debian" in other
    assert foreign_owner(node(kubeletVersion="v1.30.0-vk-azure")) is not None
