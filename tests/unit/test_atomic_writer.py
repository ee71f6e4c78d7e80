"""The ``..data`` atomic writer: swap, no-op when unchanged, stale names removed, paths checked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provider.atomic_writer import DATA_DIR, PayloadError, validate_path, write_payload


def visible(root: Path) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for dirpath, _, files in os.walk(root / DATA_DIR):
        for f in files:
            full = os.path.join(dirpath, f)
            rel = os.path.relpath(full, root / DATA_DIR)
            out[rel] = (root / rel).read_bytes()  # read through the user-visible links
    return out


def test_update_swaps_data_link_and_removes_stale_names(tmp_path: Path) -> None:
    assert write_payload(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o400)})
    first = os.readlink(tmp_path / DATA_DIR)
    assert os.readlink(tmp_path / "a") == "..data/a"
    assert (tmp_path / "dir/b").read_bytes() == b"2"
    assert os.stat(tmp_path / "dir/b").st_mode & 0o777 == 0o400
    assert not write_payload(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o400)})  # unchanged
    assert os.readlink(tmp_path / DATA_DIR) == first
    assert write_payload(tmp_path, {"a": (b"changed", 0o644), "c": (b"3", 0o644)})
    assert os.readlink(tmp_path / DATA_DIR) != first
    assert not (tmp_path / first).exists()  # the old generation is gone
    assert not os.path.lexists(tmp_path / "dir")  # a name no longer in the payload
    assert visible(tmp_path) == {"a": b"changed", "c": b"3"}
    assert sorted(os.listdir(tmp_path)) == sorted([DATA_DIR, os.readlink(tmp_path / DATA_DIR), "a", "c"])


def test_plain_files_of_an_older_layout_become_links(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"old")
    (tmp_path / "d").mkdir()
    write_payload(tmp_path, {"a": (b"new", 0o644), "d/x": (b"x", 0o644)})
    assert os.path.islink(tmp_path / "a") and (tmp_path / "a").read_bytes() == b"new"
    assert os.path.islink(tmp_path / "d")


def test_set_perms_runs_before_the_swap(tmp_path: Path) -> None:
    seen: list[bool] = []

    def perms(root: Path) -> None:
        seen.append(os.path.lexists(root / "a"))

    write_payload(tmp_path, {"a": (b"1", 0o644)}, perms)
    assert seen == [False]  # not visible yet when ownership is applied


@pytest.mark.parametrize("bad", ["", "/abs", "../x", "a/../../x", "..data", "..hidden"])
def test_invalid_paths(bad: str, tmp_path: Path) -> None:
    with pytest.raises(PayloadError):
        validate_path(bad)
    with pytest.raises(PayloadError):
        write_payload(tmp_path, {bad: (b"", 0o644)})


names = st.text(alphabet="abcxyz", min_size=1, max_size=3)
payloads = st.dictionaries(
    st.lists(names, min_size=1, max_size=2).map("/".join),
    st.binary(max_size=8),
    max_size=5,
).filter(lambda d: not any(p != q and q.startswith(p + "/") for p in d for q in d))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(payloads, min_size=1, max_size=4))
def test_any_sequence_of_payloads_ends_in_the_last(
    tmp_path_factory: pytest.TempPathFactory, steps: list
) -> None:
    root = tmp_path_factory.mktemp("v")
    for p in steps:
        write_payload(root, {k: (v, 0o644) for k, v in p.items()})
        assert visible(root) == p
        tops = {k.split("/")[0] for k in p}
        assert {n for n in os.listdir(root) if not n.startswith("..")} == tops
        assert len([n for n in os.listdir(root) if n.startswith("..") and n != DATA_DIR]) == 1
