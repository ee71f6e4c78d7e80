"""Log rotation policy (common.crilog) and the pod pids cgroup paths (sandbox.cri.mapping)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from common.logrotation import (
    compress_file,
    list_rotated,
    parse_size,
    plan_rotation,
    rotated_name,
)
from sandbox.cri.mapping import pids_max_files

MiB = 1024 * 1024


def test_no_rotation_below_the_cap_or_when_disabled() -> None:
    assert not plan_rotation(MiB - 1, MiB, [], 5).rotate
    assert not plan_rotation(10 * MiB, 0, ["a.log.1"], 5).rotate


def test_rotation_keeps_max_files_in_all_and_compresses_all_but_newest() -> None:
    rotated = [f"0.log.2026112{i}-000000" for i in range(6)]
    plan = plan_rotation(MiB, MiB, list(reversed(rotated)), 5)
    assert plan.rotate
    # live file + the one rotated now + 3 older = 5
    assert plan.remove == tuple(rotated[:3])
    assert plan.compress == tuple(rotated[3:])


def test_rotation_with_two_files_keeps_only_the_newest_rotated() -> None:
    plan = plan_rotation(MiB, MiB, ["0.log.20261120-000000.gz", "0.log.20261121-000000"], 2)
    assert plan.remove == ("0.log.20261120-000000.gz", "0.log.20261121-000000")
    assert plan.compress == ()


def test_already_compressed_files_are_not_compressed_again() -> None:
    plan = plan_rotation(MiB, MiB, ["l.20261120-000000.gz", "l.20261121-000000"], 5)
    assert plan.remove == ()
    assert plan.compress == ("l.20261121-000000",)


def test_rotated_name_is_unique_within_one_second() -> None:
    first = rotated_name("/x/0.log", 0.0)
    assert first == "/x/0.log.19700101-000000"
    second = rotated_name("/x/0.log", 0.5, {first})
    assert second == first + "-1"
    assert rotated_name("/x/0.log", 0.9, {first, second + ".gz"}) == first + "-2"


def test_list_rotated_and_compress(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_bytes(b"live\n")
    (tmp_path / "0.log.20261123-120000").write_bytes(b"old line\n" * 100)
    (tmp_path / "0.log.20261123-110000.gz").write_bytes(b"")
    (tmp_path / "0.log.20261123-100000.gz.tmp").write_bytes(b"")
    (tmp_path / "1.log").write_bytes(b"")
    found = sorted(os.path.basename(p) for p in list_rotated(str(log)))
    assert found == ["0.log.20261123-110000.gz", "0.log.20261123-120000"]
    compress_file(str(tmp_path / "0.log.20261123-120000"))
    assert not (tmp_path / "0.log.20261123-120000").exists()
    with gzip.open(tmp_path / "0.log.20261123-120000.gz") as f:
        assert f.read() == b"old line\n" * 100


@pytest.mark.parametrize(
    ("text", "size"),
    [("10Mi", 10 * MiB), ("500Ki", 500 * 1024), ("1048576", MiB), ("0", 0), ("2M", 2_000_000)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_size("ten megs")


def test_pids_max_paths_v1_and_v2() -> None:
    assert pids_max_files("/warmlet/podabc") == ("/sys/fs/cgroup/pids/warmlet/podabc/pids.max", [])
    target, controls = pids_max_files("/warmlet/podabc", v1=False)
    assert target == "/sys/fs/cgroup/warmlet/podabc/pids.max"
    assert controls == [
        "/sys/fs/cgroup/cgroup.subtree_control",
        "/sys/fs/cgroup/warmlet/cgroup.subtree_control",
    ]


def test_removing_a_rotated_file_also_removes_its_gzip(tmp_path: Path) -> None:
    from sandbox.cri.log_rotation import ContainerLogRotator

    plain = tmp_path / "0.log.20261123-120000"
    (tmp_path / "0.log.20261123-120000.gz").write_bytes(b"")  # gzipped after it was listed
    ContainerLogRotator._remove((str(plain),))
    assert list(tmp_path.iterdir()) == []
