"""One warmlet node per state/log/volumes directory.

At start a node removes the pod log and volume directories of pods it does not know (pods deleted
while it was down). Two nodes of different names sharing a directory (two ``warmlet run`` on one
host with the default ``/var/lib/warmlet`` and ``/var/log/warmlet/pods``) would each delete the
other's pods' logs and volumes. So every running node holds an exclusive ``flock`` on
``<dir>/.warmlet-node-<name>.lock``, and a node that finds another name's lock held refuses to start
with a message naming the flag to change. The same name twice (two replicas of one node under
leader election) is allowed: they are one node. Locks die with the process (SIGKILL included), so
a stale file never blocks anyone.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from provider.config import WarmletConfig

PREFIX, SUFFIX = ".warmlet-node-", ".lock"


class DirectoryInUse(RuntimeError):
    """Another running warmlet node (another name) uses one of this node's directories."""


def _held(path: Path) -> bool:
    """Whether a live process holds the lock file (we can take it: nobody does)."""
    try:
        f = path.open("rb")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def node_dirs(cfg: WarmletConfig) -> list[Path]:
    """The directories a node sweeps at start (logs, volumes, memory-backed volumes, state)."""
    dirs = [cfg.state_dir, cfg.log_dir, cfg.pods.volumes_dir]
    memory = getattr(cfg.pods, "memory_volumes_dir", None)
    volumes = cfg.pods.volumes_dir
    dirs.append(memory if memory is not None else volumes.with_name(volumes.name + "-memory"))
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


class DirClaim:
    """Held for the node's lifetime: ``acquire()`` at start, ``release()`` at stop."""

    def __init__(self, node_name: str, dirs: Iterable[Path]) -> None:
        self.node_name = node_name
        self.dirs = list(dirs)
        self._files: list[IO[bytes]] = []

    def acquire(self) -> None:
        try:
            for d in self.dirs:
                self._claim(d)
        except BaseException:
            self.release()
            raise

    def _claim(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        for lock in sorted(d.glob(f"{PREFIX}*{SUFFIX}")):
            other = lock.name[len(PREFIX) : -len(SUFFIX)]
            if other != self.node_name and _held(lock):
                raise DirectoryInUse(
                    f"{d} is used by the running warmlet node {other!r}: each node needs its own "
                    "state_dir and log_dir (--state-dir, --log-dir), or each would remove the "
                    "other's pod logs and volumes"
                )
        f = (d / f"{PREFIX}{self.node_name}{SUFFIX}").open("ab")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # the same node name in another process (leader election): one node
            f.close()
            return
        self._files.append(f)

    def release(self) -> None:
        for f in self._files:
            with contextlib.suppress(OSError):
                f.close()  # closing drops the flock
        self._files.clear()


def claim_dirs(cfg: WarmletConfig) -> DirClaim:
    """Claim this node's directories or raise DirectoryInUse."""
    claim = DirClaim(cfg.node.name, node_dirs(cfg))
    claim.acquire()
    return claim
