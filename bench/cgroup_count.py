"""Counting memory cgroups for bench/cgroup_churn.py: parsing, the kernfs counter, attribution.

Pure parts (unit tested): the flat-keyed cgroup files and ``/proc/cgroups``, v1's dying count,
the kernfs inode counter (:func:`created_between`), the window between two probe cgroups, which
cgroups are a node's and of which kind, per-1,000 scaling. :class:`Hierarchy` is the host side:
the memory hierarchy (v1 or v2), timed ``memory.stat`` reads, probe cgroups, dying cgroups.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cgroup_watch import Created

JSON = dict[str, Any]
CGROUP_FS = Path("/sys/fs/cgroup")
TASK_DIR = "io.containerd.runtime.v2.task"  # <containerd state>/<this>/<namespace>/<task id>


def parse_keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file (``cgroup.stat``, ``memory.stat``): ``key value`` per line."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def parse_proc_cgroups(text: str) -> dict[str, int]:
    """``/proc/cgroups``: subsystem → num_cgroups (live + dying cgroups of its hierarchy)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and not line.startswith("#"):
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[2])
    return out


def dying_v1(num_cgroups: int, live_dirs: int) -> int:
    """Dying memory cgroups on v1: counted by /proc/cgroups (root included) but no directory."""
    return max(0, num_cgroups - live_dirs)


def created_between(ino_before: int, ino_after: int, stride: int) -> int | None:
    """Cgroups the hierarchy made strictly between two probe cgroups (kernfs numbers each cgroup
    with ``stride`` = 1 + its file count, cyclically increasing); None if not a whole multiple."""
    delta = ino_after - ino_before
    if stride <= 0 or delta <= 0 or delta % stride:
        return None
    return delta // stride - 1


def per_thousand(count: int, runs: int) -> float:
    return round(count * 1000 / runs, 1) if runs else float("nan")


def median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def between(created: Sequence[Created], first: str, last: str, root: str = "memory") -> list[Created]:
    """The directories of ``root`` recorded strictly between the probe cgroups ``first`` and
    ``last`` (one inotify queue: records are in the order the kernel made them)."""
    names = [c.name if c.root == root else None for c in created]
    if first not in names or last not in names:
        raise ValueError(f"probe {first if first not in names else last} not seen by the watcher")
    i, j = names.index(first), names.index(last)
    return [c for c in created[i + 1 : j] if c.root == root]


def task_ids(created: Iterable[Created], label: str = "containerd") -> set[str]:
    """Task ids a containerd started (``<TASK_DIR>/<namespace>/<id>`` under its state dir)."""
    out = set()
    for c in created:
        parts = c.rel.split("/")
        if c.root == label and len(parts) == 3 and parts[0] == TASK_DIR:
            out.add(parts[2])
    return out


def attribute(created: Iterable[Created], prefix: str, names: set[str]) -> list[Created]:
    """The node's cgroups: under ``prefix`` (its cgroup root, "" for none) or named in ``names``."""
    p = prefix.strip("/")
    return [c for c in created if (p and (c.rel == p or c.rel.startswith(p + "/"))) or c.name in names]


def classify(c: Created, container_ids: set[str], pod_uids: set[str], tasks: set[str]) -> str:
    """pod / container / sandbox (another task of the node: pause) / other (QoS parents, roots)."""
    if c.name in container_ids:
        return "container"
    if c.name.startswith("pod") and c.name[3:] in pod_uids:
        return "pod"
    parent = c.rel.rsplit("/", 2)[-2] if c.rel.count("/") else ""
    if c.name in tasks or (parent.startswith("pod") and parent[3:] in pod_uids):
        return "sandbox"
    return "other"


def node_figures(
    runs: int,
    mine: Sequence[Created],
    kinds: Callable[[Created], str],
    container_ids: Sequence[str],
) -> JSON:
    """A node's count: cgroups made in its window, per 1,000 runs, by kind, container misses."""
    by_kind = Counter(kinds(c) for c in mine)
    seen = {c.name for c in mine}
    return {
        "runs": runs,
        "created": len(mine),
        "per_1000_runs": per_thousand(len(mine), runs),
        "per_run": round(len(mine) / runs, 3) if runs else float("nan"),
        "by_kind_per_1000_runs": {k: per_thousand(v, runs) for k, v in sorted(by_kind.items())},
        "runs_without_container_id": runs - len(container_ids),
        "misses": sum(1 for cid in container_ids if cid not in seen),
    }


def window_check(watched_all: int, probe_count: int | None, mine: int) -> JSON:
    """The watcher's count of every cgroup made in the window against the inode counter's, and
    how many of them were not the node's (other processes of the machine, e.g. other test beds)."""
    missed = None if probe_count is None else probe_count - watched_all
    return {
        "watcher_all": watched_all,
        "kernfs_counter_all": probe_count,
        "watcher_missed": missed,
        "not_the_nodes": watched_all - mine,
    }


# ---------------------------------------------------------------------------- host reads


@dataclass(frozen=True)
class Hierarchy:
    version: int
    root: Path  # the memory hierarchy's root directory

    @staticmethod
    def detect(fs: Path = CGROUP_FS) -> Hierarchy:
        if (fs / "cgroup.controllers").exists():
            return Hierarchy(2, fs)
        return Hierarchy(1, fs / "memory")

    def read_ms(self, reads: int) -> list[float]:
        """Timed reads of the root memory.stat (open + read to the end + close), in ms; none when
        the root has no memory.stat (cgroup v2 before Linux 5.x had none at the root)."""
        out: list[float] = []
        if not (self.root / "memory.stat").exists():
            return out
        for _ in range(reads):
            t0 = time.perf_counter()
            with open(self.root / "memory.stat", "rb") as f:
                f.read()
            out.append((time.perf_counter() - t0) * 1000)
        return out

    def live_dirs(self) -> set[str]:
        """Every live cgroup of the hierarchy, relative to its root ("." for the root)."""
        return {os.path.relpath(d, self.root) for d, _, _ in os.walk(self.root)}

    def dying(self) -> int:
        if self.version == 2:
            return parse_keyed((self.root / "cgroup.stat").read_text()).get("nr_dying_descendants", 0)
        live = len(self.live_dirs())
        return dying_v1(parse_proc_cgroups(Path("/proc/cgroups").read_text()).get("memory", 0), live)

    def probe(self, name: str) -> tuple[int, int]:
        """(inode, stride) of a probe cgroup ``name`` made and removed at once."""
        d = self.root / name
        d.mkdir()
        try:
            return d.stat().st_ino, 1 + len(os.listdir(d))
        finally:
            d.rmdir()

    def checkpoint(self, reads: int, probe: str) -> JSON:
        ms = self.read_ms(reads)
        ino, stride = self.probe(probe)
        return {
            "probe": probe,
            "ino": ino,
            "stride": stride,
            "dying": self.dying(),
            "memory_stat_read_ms": median(ms),
        }
