"""Host operations of the CRI backend: what CRI cannot do, done on the node itself.

procfs reads (processes of a network namespace, of a container's cgroup, net counters), pod
cgroups (``pids.max``, removal of the pod-level parent), ``nsenter`` into a sandbox (SysV IPC),
the sandbox's hostname file, wiping directories, and containerd's own ``ctr`` as the last resort
for a task CRI can no longer delete (the hostname itself: ``uts``). All blocking: callers run
them in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox.cri import mapping as m
from sandbox.cri import stats_mapping as sm

log = logging.getLogger("warmlet.cri")


@dataclass(frozen=True)
class RuntimeInfo:
    """Where the runtime keeps its files, from its verbose Status (containerd's CRI ``config``)."""

    root_dir: str = ""  # containerd: <root>/io.containerd.grpc.v1.cri
    state_dir: str = ""  # containerd: <state>/io.containerd.grpc.v1.cri
    sandbox_image: str = ""  # the pause image

    @classmethod
    def from_status_info(cls, info: Mapping[str, str]) -> RuntimeInfo:
        """Parse the ``config`` entry of a verbose Status answer (empty when absent or unreadable)."""
        raw = info.get("config")
        try:
            cfg = json.loads(raw) if raw else {}
        except ValueError:
            cfg = {}
        if not isinstance(cfg, dict):
            cfg = {}
        return cls(
            root_dir=str(cfg.get("rootDir") or ""),
            state_dir=str(cfg.get("stateDir") or ""),
            sandbox_image=str(cfg.get("sandboxImage") or ""),
        )

    def task_dir(self, container_id: str) -> str | None:
        """containerd's bundle directory of the container's task (runtime v2, CRI namespace)."""
        if not self.state_dir:
            return None
        tasks = os.path.join(os.path.dirname(self.state_dir), "io.containerd.runtime.v2.task")
        return os.path.join(tasks, "k8s.io", container_id)

    def shm_dir(self, sandbox_id: str) -> str:
        """The sandbox's /dev/shm tmpfs that every container of it mounts ("" if unknown)."""
        return os.path.join(self.state_dir, "sandboxes", sandbox_id, "shm") if self.state_dir else ""

    def hostname_file(self, sandbox_id: str) -> str:
        """The hostname file the runtime mounts into the sandbox's containers ("" if unknown)."""
        return os.path.join(self.root_dir, "sandboxes", sandbox_id, "hostname") if self.root_dir else ""


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def ns_inode(pid: int, ns: str = "net") -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{ns}").st_ino
    except OSError:
        return None


def leftover_pids(pause_pid: int) -> list[int]:
    """Processes in the pause's network namespace that are not the pause or its descendants."""
    target = ns_inode(pause_pid)
    if target is None:
        return []
    parents: dict[int, int] = {}

    def parent(pid: int) -> int | None:
        # Read on demand: only members and their ancestors, not every process on the node
        # (reading /proc/<pid>/stat of all of them made a scrub cost ~0.1 s of CPU).
        if pid not in parents:
            try:
                stat = read_text(f"/proc/{pid}/stat")
                parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return None
        return parents[pid]

    members: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid != pause_pid and ns_inode(pid) == target and parent(pid) is not None:
            members.append(pid)

    def descends_from_pause(pid: int) -> bool:
        seen = 0
        while pid > 1 and seen < 64:
            if pid == pause_pid:
                return True
            pid = parent(pid) or 0
            seen += 1
        return False

    return [p for p in members if not descends_from_pause(p)]


def kill_pids(pids: Iterable[int]) -> list[int]:
    killed = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def pids_in_cgroup_of(container_id: str) -> list[int]:
    """Processes whose cgroup path names the container (runc puts each container in its own)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if container_id in read_text(f"/proc/{entry}/cgroup"):
                pids.append(int(entry))
        except OSError:
            continue
    return pids


def task_never_started(container_id: str, task_dir: str | None) -> bool | None:
    """Whether the container's task provably never ran its process: True when containerd never
    made the task (no bundle directory ``task_dir``) or every process in its cgroup is still
    runc's init (``runc create`` done, ``runc start`` not); False when one is not; None when
    nothing is left to tell (``task_dir`` None: where tasks live is not known)."""
    if task_dir is not None and not os.path.isdir(task_dir):
        return True
    comms = []
    for pid in pids_in_cgroup_of(container_id):
        with contextlib.suppress(OSError):
            comms.append(read_text(f"/proc/{pid}/comm").strip())
    if not comms:
        return None
    return all(c.startswith("runc:[") for c in comms)


def remove_cgroup(parent: str) -> None:
    """rmdir ``parent`` in every mounted cgroup hierarchy (v1 controllers and the unified one)."""
    rel = parent.strip("/")
    if not rel:
        return
    roots = ["/sys/fs/cgroup"]
    with contextlib.suppress(OSError):
        roots += [os.path.join("/sys/fs/cgroup", d) for d in os.listdir("/sys/fs/cgroup")]
    for root in roots:
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            with contextlib.suppress(OSError):
                os.rmdir(path)


def set_pids_max(parent: str, limit: int) -> str:
    """Create the pod's cgroup (pids controller) and write ``pids.max`` before the sandbox starts
    in it (see ``mapping.pids_max_files`` for why not through CRI); returns the file."""
    v1 = os.path.isdir("/sys/fs/cgroup/pids")
    target, controls = m.pids_max_files(parent, v1=v1)
    for ctl in controls:  # cgroup v2: enable the pids controller down to the pod's parent
        os.makedirs(os.path.dirname(ctl), exist_ok=True)
        with open(ctl, "w") as f:
            f.write("+pids")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target, "w") as f:
        f.write(str(limit))
    return target


def net_counters(pause_pid: int) -> tuple[int, int]:
    """(rx, tx) bytes of the network namespace of ``pause_pid``; (0, 0) when unreadable."""
    if not pause_pid:
        return (0, 0)
    try:
        nd = sm.parse_net_dev(read_text(f"/proc/{pause_pid}/net/dev"))
    except OSError:
        return (0, 0)
    return (nd.rx_bytes, nd.tx_bytes)


def node_memory_bytes() -> int:
    try:
        return sm.parse_meminfo(read_text("/proc/meminfo")).get("MemTotal", 0)
    except OSError:
        return 0


def wipe_dir(path: str) -> None:
    """Remove the contents of a directory (not the directory: mounts may point at it)."""
    p = Path(path)
    if not p.is_absolute() or p == Path("/") or p.is_symlink() or not p.is_dir():
        return
    for child in p.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()


def wipe_ipc(pause_pid: int, shm_dir: str = "") -> None:
    """Empty the sandbox's /dev/shm and remove its SysV IPC objects.

    The runtime's per-sandbox shm tmpfs (containerd: ``<stateDir>/sandboxes/<id>/shm``) is what
    every container of the sandbox mounts at /dev/shm; the pause's view is a fallback.
    """
    if shm_dir and os.path.isdir(shm_dir):
        wipe_dir(shm_dir)
    wipe_dir(f"/proc/{pause_pid}/root/dev/shm")
    try:
        subprocess.run(
            ["nsenter", "-t", str(pause_pid), "-i", "ipcrm", "--all"],
            check=False,
            capture_output=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("sysv ipc cleanup failed pause_pid=%d error=%s", pause_pid, e)


def write_hostname_file(hostname_file: str, hostname: str) -> None:
    """The runtime's per-sandbox hostname file (mounted at /etc/hostname), rewritten for a reused
    sandbox's new pod (best effort: a runtime without one has nothing to rewrite)."""
    if hostname_file and os.path.exists(hostname_file):
        with contextlib.suppress(OSError), open(hostname_file, "w") as f:
            f.write(hostname + "\n")


def ctr_delete_task(runtime_endpoint: str, container_id: str) -> None:
    """``ctr tasks delete --force`` on a containerd unix socket (best effort; needs ``ctr``)."""
    ctr = shutil.which("ctr")
    if not runtime_endpoint.startswith("unix://") or ctr is None:
        return
    cmd = [ctr, "--address", runtime_endpoint[len("unix://") :], "--namespace", "k8s.io"]
    try:
        r = subprocess.run(
            [*cmd, "tasks", "delete", "--force", container_id], capture_output=True, text=True, timeout=20
        )
        log.warning(
            "containerd task deleted with ctr container=%s rc=%d out=%s",
            container_id[:12],
            r.returncode,
            (r.stderr or r.stdout).strip()[:200],
        )
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("ctr tasks delete failed container=%s error=%s", container_id[:12], e)


def remove_stale_log_dirs(log_dir: str, keep: set[str] | None, only: str = "") -> None:
    """Remove pod log dirs (``<ns>_<name>_<uid>``) whose uid is not in ``keep`` (or, with
    ``only``, that pod's)."""
    try:
        entries = os.listdir(log_dir)
    except OSError:
        return
    for e in entries:
        parts = e.rsplit("_", 1)
        if len(parts) != 2 or e.count("_") < 2:
            continue
        if (parts[1] == only) if only else (keep is not None and parts[1] not in keep):
            shutil.rmtree(os.path.join(log_dir, e), ignore_errors=True)
