"""Every directory made under some roots, as it is made: a recursive inotify watcher (Linux).

Used by bench/cgroup_churn.py to count the memory cgroups a node creates (cgroupfs directories)
and the tasks a containerd starts (its task state directories). Why inotify and not before/after
counts: a cgroup created and removed between two reads is invisible to a count (cgroup v2's
``nr_descendants + nr_dying_descendants`` drops again once the kernel frees a dying cgroup; v1
has no per-subtree counter at all); ``mkdir`` raises an ``IN_CREATE`` event on the parent
directory's watch, whatever the file system. The one window: a directory made inside a
directory we have not put a watch on yet (microseconds after its creation); each new directory
is scanned right after its watch is added, so only a child made *and removed* inside that window
could be missed. The scenario checks the count against the container ids the pods report
(``misses``), and an inotify queue overflow is reported, never hidden.

Pure parts: :func:`parse_events` (the kernel's event records).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import select
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

IN_CREATE = 0x00000100
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    name: str


def parse_events(buf: bytes) -> list[Event]:
    """The ``struct inotify_event`` records of one ``read`` (name NUL-padded to ``len``)."""
    out: list[Event] = []
    off = 0
    while off + _HEADER.size <= len(buf):
        wd, mask, _cookie, length = _HEADER.unpack_from(buf, off)
        raw = buf[off + _HEADER.size : off + _HEADER.size + length]
        out.append(Event(wd, mask, raw.split(b"\0", 1)[0].decode(errors="replace")))
        off += _HEADER.size + length
    return out


@dataclass(frozen=True)
class Created:
    """A directory seen made: when (monotonic), under which root label, path relative to it."""

    t: float
    root: str
    rel: str

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]


@dataclass
class _Root:
    label: str
    path: Path
    max_depth: int  # watch directories down to this depth below the root (0: the root only)


@dataclass
class DirWatcher:
    """Records every directory made under the roots while running (``with DirWatcher(...)``).

    ``roots``: label → (existing directory, max depth: directories deeper than that are recorded
    no further). ``created`` grows from the watcher's thread (read it with :meth:`snapshot`).
    """

    roots: dict[str, tuple[Path, int]]
    created: list[Created] = field(default_factory=list)
    overflowed: bool = False
    _wds: dict[int, tuple[_Root, Path]] = field(default_factory=dict)
    _known: set[Path] = field(default_factory=set)
    _fd: int = -1
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> DirWatcher:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._libc = libc
        self._fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for label, (path, depth) in self.roots.items():
            root = _Root(label, Path(path), depth)
            if not root.path.is_dir():
                raise FileNotFoundError(f"no directory {root.path} to watch")
            self._watch_tree(root, root.path, record=False)
        self._thread = threading.Thread(target=self._loop, name="cgroup-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def snapshot(self) -> list[Created]:
        with self._lock:
            return list(self.created)

    def _add_watch(self, root: _Root, path: Path) -> bool:
        wd = self._libc.inotify_add_watch(self._fd, str(path).encode(), IN_CREATE | IN_ONLYDIR)
        if wd < 0:
            return False  # gone already (or not a directory)
        self._wds[wd] = (root, path)
        return True

    def _depth(self, root: _Root, path: Path) -> int:
        return len(path.relative_to(root.path).parts)

    def _record(self, root: _Root, path: Path) -> None:
        with self._lock:
            self.created.append(Created(time.monotonic(), root.label, str(path.relative_to(root.path))))

    def _watch_tree(self, root: _Root, path: Path, record: bool) -> None:
        """Watch ``path`` then scan it (children made before the watch): add-watch-then-scan."""
        leaf = self._depth(root, path) >= root.max_depth
        if path in self._known:
            return
        if not leaf:  # forgotten again on its IN_IGNORED (leaves get no watch: never deduplicated)
            self._known.add(path)
        if record:
            self._record(root, path)
        if leaf:
            return
        if not self._add_watch(root, path):
            return
        for child in self._subdirs(path):
            self._watch_tree(root, child, record)

    @staticmethod
    def _subdirs(path: Path) -> Iterator[Path]:
        with contextlib.suppress(OSError), os.scandir(path) as it:
            for e in it:
                with contextlib.suppress(OSError):
                    if e.is_dir(follow_symlinks=False):
                        yield Path(e.path)

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(100):
                continue
            try:
                buf = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            for ev in parse_events(buf):
                self._handle(ev)

    def _handle(self, ev: Event) -> None:
        if ev.mask & IN_Q_OVERFLOW:
            self.overflowed = True
            return
        if ev.mask & IN_IGNORED:
            entry = self._wds.pop(ev.wd, None)
            if entry is not None:
                self._known.discard(entry[1])
            return
        if not (ev.mask & IN_CREATE and ev.mask & IN_ISDIR):
            return
        entry = self._wds.get(ev.wd)
        if entry is None:
            return
        root, parent = entry
        path = parent / ev.name
        self._watch_tree(root, path, record=True)
