"""bench/cgroup_churn.py, cgroup_count.py and cgroup_watch.py: parsing, counting, attribution, scaling."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import cgroup_churn
from bench import cgroup_count as cc
from bench.cgroup_watch import IN_CREATE, IN_ISDIR, Created, DirWatcher, parse_events

PROC_CGROUPS = """#subsys_name\thierarchy\tnum_cgroups\tenabled
cpuset\t3\t69\t1
memory\t4\t397\t1
pids\t8\t63\t1
"""


def c(rel: str, root: str = "memory", t: float = 0.0) -> Created:
    return Created(t, root, rel)


def test_parse_keyed_reads_cgroup_stat_and_memory_stat() -> None:
    assert cc.parse_keyed("nr_descendants 12\nnr_dying_descendants 340\n") == {
        "nr_descendants": 12,
        "nr_dying_descendants": 340,
    }
    assert cc.parse_keyed("cache 4096\ntotal_rss 8192\nbroken line here\nx notanumber\n") == {
        "cache": 4096,
        "total_rss": 8192,
    }


def test_parse_proc_cgroups_takes_num_cgroups_per_subsystem() -> None:
    assert cc.parse_proc_cgroups(PROC_CGROUPS) == {"cpuset": 69, "memory": 397, "pids": 63}


def test_dying_v1_is_counted_minus_live_never_negative() -> None:
    assert cc.dying_v1(397, 69) == 328
    assert cc.dying_v1(60, 69) == 0


@given(st.integers(0, 10**6), st.integers(0, 5000), st.integers(2, 64))
def test_created_between_inverts_the_kernfs_numbering(base: int, made: int, stride: int) -> None:
    before = base
    after = base + stride * (made + 1)  # the made cgroups, then the second probe
    assert cc.created_between(before, after, stride) == made


def test_created_between_refuses_what_is_no_whole_multiple() -> None:
    assert cc.created_between(100, 133, 33) == 0
    assert cc.created_between(100, 150, 33) is None
    assert cc.created_between(100, 100, 33) is None
    assert cc.created_between(100, 199, 0) is None


def test_per_thousand_and_median() -> None:
    assert cc.per_thousand(600, 200) == 3000.0
    assert cc.per_thousand(1, 3) == 333.3
    assert math.isnan(cc.per_thousand(5, 0))
    assert cc.median([3.0, 1.0, 2.0, 100.0]) == 2.5
    assert math.isnan(cc.median([]))


def test_between_takes_the_records_strictly_between_the_probes() -> None:
    created = [
        c("x"),
        c("probe-a"),
        c("k8s.io/aaa"),
        c("io.containerd.runtime.v2.task/k8s.io/aaa", "containerd"),
        c("k8s.io/bbb"),
        c("probe-b"),
        c("k8s.io/late"),
    ]
    assert [x.rel for x in cc.between(created, "probe-a", "probe-b")] == ["k8s.io/aaa", "k8s.io/bbb"]
    with pytest.raises(ValueError, match="probe-z"):
        cc.between(created, "probe-a", "probe-z")


def test_task_ids_are_the_task_directories_of_the_containerd() -> None:
    created = [
        c("io.containerd.runtime.v2.task", "containerd"),
        c("io.containerd.runtime.v2.task/k8s.io", "containerd"),
        c("io.containerd.runtime.v2.task/k8s.io/abc", "containerd"),
        c("io.containerd.grpc.v1.cri/sandboxes/zzz", "containerd"),
        c("io.containerd.runtime.v2.task/k8s.io/def"),  # another root: not the containerd
    ]
    assert cc.task_ids(created) == {"abc"}


def test_attribute_by_cgroup_root_or_by_name() -> None:
    created = [
        c("warmlet-kubelet-kb/kubepods/besteffort/podu1"),
        c("warmlet-kubelet-kb"),
        c("warmlet-kubelet-kb2/kubepods"),  # another root with the same start: not under it
        c("k8s.io/abc"),
        c("k8s.io/other"),
        c("warmlet/podu9"),
    ]
    kubelet = cc.attribute(created, "/warmlet-kubelet-kb", set())
    assert [x.rel for x in kubelet] == ["warmlet-kubelet-kb/kubepods/besteffort/podu1", "warmlet-kubelet-kb"]
    warm = cc.attribute(created, "", {"abc", "podu9"})
    assert [x.rel for x in warm] == ["k8s.io/abc", "warmlet/podu9"]


def test_classify_pod_container_sandbox_other() -> None:
    cids, uids, tasks = {"cid1"}, {"u1"}, {"cid1", "sb1"}
    root = "warmlet-kubelet-kb/kubepods/besteffort"
    assert cc.classify(c(f"{root}/podu1"), cids, uids, tasks) == "pod"
    assert cc.classify(c(f"{root}/podu1/cid1"), cids, uids, tasks) == "container"
    assert cc.classify(c(f"{root}/podu1/pause9"), cids, uids, tasks) == "sandbox"  # child of the pod
    assert cc.classify(c("k8s.io/sb1"), cids, uids, tasks) == "sandbox"  # a task of the node
    assert cc.classify(c(f"{root}/podzz"), cids, uids, tasks) == "other"
    assert cc.classify(c("warmlet-kubelet-kb"), cids, uids, tasks) == "other"


def test_node_figures_scales_and_counts_misses() -> None:
    mine = [c("p/podu1"), c("p/podu1/s1"), c("p/podu1/cid1"), c("p/podu2"), c("p/podu2/s2")]
    kinds = {"podu1": "pod", "podu2": "pod", "s1": "sandbox", "s2": "sandbox", "cid1": "container"}
    fig = cc.node_figures(2, mine, lambda x: kinds[x.name], ["cid1", "cid2"])
    assert fig["created"] == 5
    assert fig["per_1000_runs"] == 2500.0
    assert fig["per_run"] == 2.5
    assert fig["by_kind_per_1000_runs"] == {"container": 500.0, "pod": 1000.0, "sandbox": 1000.0}
    assert fig["misses"] == 1  # cid2's cgroup never seen
    assert fig["runs_without_container_id"] == 0


def test_window_check_and_ratio() -> None:
    assert cc.window_check(10, 12, 7) == {
        "watcher_all": 10,
        "kernfs_counter_all": 12,
        "watcher_missed": 2,
        "not_the_nodes": 3,
    }
    assert cc.window_check(10, None, 10)["watcher_missed"] is None
    nodes = {"warmlet": {"per_1000_runs": 1000.0}, "kubelet": {"per_1000_runs": 3000.0}}
    assert cgroup_churn.build_result(200, 2, {"version": 1}, nodes, [])["ratio_warmlet_over_kubelet"] == 0.333
    nodes["kubelet"] = {"ran": False}
    assert cgroup_churn.build_result(1, 1, {}, nodes, [])["ratio_warmlet_over_kubelet"] is None


def test_container_id_strips_the_runtime_scheme() -> None:
    assert cgroup_churn.container_id({"containerStatuses": [{"containerID": "containerd://abc"}]}) == "abc"
    assert cgroup_churn.container_id({}) == ""


def test_summary_rows_show_both_nodes_and_a_node_that_did_not_run() -> None:
    node = {
        "ran": True,
        "per_1000_runs": 1000.0,
        "by_kind_per_1000_runs": {"container": 1000.0},
        "memory_stat_read_ms_before": 1.0,
        "memory_stat_read_ms_after": 2.0,
        "dying_before": 3,
        "dying_after": 4,
        "window_check": {"watcher_missed": 0},
        "misses": 0,
    }
    rows = dict(
        cgroup_churn.summary_rows(
            {"runs": 5, "nodes": {"warmlet": node, "kubelet": {"ran": False, "reason": "no binary"}}}
        )
    )
    assert rows["warmlet: memory cgroups per 1,000 runs"] == "1000.0 (container 1000.0)"
    assert rows["warmlet: root memory.stat read ms before / after"] == "1.0 / 2.0"
    assert rows["kubelet"] == "not run: no binary"


def test_parse_events_reads_nul_padded_records() -> None:
    def rec(wd: int, mask: int, name: bytes, pad: int) -> bytes:
        raw = name + b"\0" * pad
        return struct.pack("iIII", wd, mask, 0, len(raw)) + raw

    buf = rec(1, IN_CREATE | IN_ISDIR, b"pod123", 10) + rec(7, 0x8000, b"", 0)
    evs = parse_events(buf)
    assert [(e.wd, e.mask, e.name) for e in evs] == [(1, IN_CREATE | IN_ISDIR, "pod123"), (7, 0x8000, "")]


def test_watcher_sees_nested_directories_and_respects_max_depth(tmp_path: Path) -> None:
    import time

    (tmp_path / "old").mkdir()
    with DirWatcher({"t": (tmp_path, 2)}) as w:
        (tmp_path / "a").mkdir()
        time.sleep(0.3)  # the watch on a/ is in place
        (tmp_path / "a" / "b").mkdir()
        (tmp_path / "a" / "b" / "deep").mkdir()  # below max depth: not recorded
        deadline = time.monotonic() + 5
        while len(w.snapshot()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
    assert [x.rel for x in w.snapshot()] == ["a", "a/b"]
    assert not w.overflowed


def test_hierarchy_detects_v1_and_v2_and_reads_v2_dying(tmp_path: Path) -> None:
    v1 = cc.Hierarchy.detect(tmp_path)
    assert (v1.version, v1.root) == (1, tmp_path / "memory")
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.stat").write_text("nr_descendants 40\nnr_dying_descendants 12345\n")
    v2 = cc.Hierarchy.detect(tmp_path)
    assert (v2.version, v2.root) == (2, tmp_path)
    assert v2.dying() == 12345
    assert v2.read_ms(3) == []  # no memory.stat at this root
    (tmp_path / "memory.stat").write_text("anon 1\n")
    assert len(v2.read_ms(3)) == 3
