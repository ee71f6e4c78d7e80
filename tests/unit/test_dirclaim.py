"""Directories of one warmlet node are never shared with another node (each sweeps its own at start)."""

from __future__ import annotations

from pathlib import Path

import pytest

from provider.config import WarmletConfig
from provider.dirclaim import DirClaim, DirectoryInUse, claim_dirs, node_dirs

pytestmark = pytest.mark.unit


def cfg(tmp: Path, name: str, state: str = "state", logs: str = "logs") -> WarmletConfig:
    c = WarmletConfig.model_validate({"state_dir": str(tmp / state), "log_dir": str(tmp / logs)})
    c.node.name = name
    return c


def test_another_node_in_the_same_dirs_is_refused_until_it_stops(tmp_path: Path) -> None:
    a = claim_dirs(cfg(tmp_path, "a"))
    with pytest.raises(DirectoryInUse, match=r"'a'.*--state-dir"):
        claim_dirs(cfg(tmp_path, "b"))
    with pytest.raises(DirectoryInUse):  # sharing only the log dir is refused too
        claim_dirs(cfg(tmp_path, "b", state="state-b"))
    a.release()
    claim_dirs(cfg(tmp_path, "b")).release()  # a stale lock file of a stopped node blocks nobody


def test_same_node_name_twice_and_separate_dirs_are_fine(tmp_path: Path) -> None:
    a = claim_dirs(cfg(tmp_path, "a"))
    a2 = claim_dirs(cfg(tmp_path, "a"))  # two replicas of one node (leader election)
    b = claim_dirs(cfg(tmp_path, "b", state="state-b", logs="logs-b"))
    for c in (a, a2, b):
        c.release()


def test_a_failed_claim_holds_nothing(tmp_path: Path) -> None:
    a = claim_dirs(cfg(tmp_path, "a", state="shared", logs="logs-a"))
    b = DirClaim("b", [tmp_path / "logs-b", tmp_path / "shared"])
    with pytest.raises(DirectoryInUse):
        b.acquire()
    a.release()
    claim_dirs(cfg(tmp_path, "c", state="x", logs="logs-b")).release()  # b let logs-b go


def test_volume_and_cert_dirs_follow_state_dir(tmp_path: Path) -> None:
    c = cfg(tmp_path, "a")
    assert c.pods.volumes_dir == tmp_path / "state" / "pods"
    assert c.server.cert_dir == tmp_path / "state" / "pki"
    assert tmp_path / "state" / "pods-memory" in node_dirs(c)
    own = WarmletConfig.model_validate({"state_dir": "/s", "pods": {"volumes_dir": "/v"}})
    assert own.pods.volumes_dir == Path("/v")
    assert WarmletConfig().pods.volumes_dir == Path("/var/lib/warmlet/pods")
