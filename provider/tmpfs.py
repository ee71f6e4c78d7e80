"""warmlet's own tmpfs: is a directory memory-backed, mount one there, unmount it again.

Plain OS operations (statfs, mount, umount2 through libc) for the memory-backed volume root of
provider.resolve_volumes; errors are ``OSError``. Only a tmpfs whose source is
:data:`MOUNT_SOURCE` is ever unmounted as warmlet's own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path
from typing import Any

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2
_libc: Any = None
MOUNT_SOURCE = "warmlet-memory"  # the source of warmlet's own tmpfs: only that one is ever unmounted


def is_our_mount(path: Path) -> bool:
    """``path`` is a tmpfs warmlet mounted (its source in /proc/self/mountinfo), not e.g. /dev/shm."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and fields[4] == target:
                    tail = line.split(" - ", 1)[1].split(" ") if " - " in line else []
                    if len(tail) > 1 and tail[1] == MOUNT_SOURCE:
                        return True
    except OSError:
        return False
    return False


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    return _libc


def fs_type(path: str | os.PathLike[str]) -> int:
    """statfs(2) f_type of the filesystem holding ``path`` (os.statvfs does not expose it)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if _c().statfs(os.fsencode(path), buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def is_memory_backed(path: str | os.PathLike[str]) -> bool:
    try:
        return fs_type(path) in (TMPFS_MAGIC, RAMFS_MAGIC)
    except OSError:
        return False


def mount_tmpfs(path: Path, size_bytes: int | None) -> None:
    opts = "mode=0711" + (f",size={size_bytes}" if size_bytes else "")
    rc = _c().mount(MOUNT_SOURCE.encode(), os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts.encode())
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


def unmount(path: str) -> None:
    if _c().umount2(os.fsencode(path), _MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not a mount point (any more)
            raise OSError(e, os.strerror(e), path)
