"""fsGroup ownership of volumes: kubelet's permission bits, symlinks never chmod'ed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.volume_ownership import owned_mode, set_volume_ownership


def test_owned_mode_examples() -> None:
    assert owned_mode(0o100400, False, True) == 0o440
    assert owned_mode(0o100644, False, False) == 0o664
    assert owned_mode(0o40777, True, False) == 0o2777
    assert owned_mode(0o40755, True, True) == 0o2755


@given(st.integers(0, 0o7777), st.booleans(), st.booleans())
def test_owned_mode_only_adds_group_bits(mode: int, is_dir: bool, read_only: bool) -> None:
    out = owned_mode(mode, is_dir, read_only)
    assert out & mode == mode  # nothing taken away
    assert out & 0o040  # group may always read
    assert bool(out & 0o020) == (not read_only or bool(mode & 0o020))
    assert bool(out & stat.S_ISGID) == (is_dir or bool(mode & stat.S_ISGID))
    assert out & ~(mode | 0o660 | 0o110 | stat.S_ISGID) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another group needs root")
def test_walks_everything_and_leaves_link_targets_alone(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/f").write_bytes(b"x")
    os.chmod(tmp_path / "sub/f", 0o400)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"y")
    os.chmod(outside, 0o600)
    os.symlink(outside, tmp_path / "link")
    set_volume_ownership(tmp_path, 4321, read_only=True)
    for p in (tmp_path, tmp_path / "sub", tmp_path / "sub/f"):
        assert os.lstat(p).st_gid == 4321
    assert os.stat(tmp_path / "sub/f").st_mode & 0o777 == 0o440
    assert os.stat(tmp_path / "sub").st_mode & stat.S_ISGID
    assert os.lstat(tmp_path / "link").st_gid == 4321
    assert os.stat(outside).st_mode & 0o777 == 0o600 and os.stat(outside).st_gid != 4321
    set_volume_ownership(tmp_path / "sub", None, read_only=True)  # no fsGroup: nothing changes
