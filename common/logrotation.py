"""CRI container log rotation, the pure part: when to rotate, rotated file names, which to keep.


kubelet's ContainerLogManager, for the same reason: the runtime appends to a container's log
file for as long as the container runs, so a container writing at full speed fills the disk
unless the file is rotated at a size cap and only a few rotated files are kept.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

ROTATED_TIME_FORMAT = "%Y%m%d-%H%M%S"  # kubelet's suffix: 0.log.20261123-125702
COMPRESSED_SUFFIX = ".gz"


@dataclass(frozen=True, slots=True)
class RotationPlan:
    """What to do with one container's log now: rotate it, and which rotated files to remove
    or compress first (oldest first), so that at most ``max_files`` files exist afterwards."""

    rotate: bool
    remove: tuple[str, ...] = ()
    compress: tuple[str, ...] = ()


_SIZE_UNITS = {"": 1, "k": 1000, "M": 1000**2, "G": 1000**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}


def parse_size(value: str | int) -> int:
    """A byte size as kubelet's containerLogMaxSize takes it: ``10Mi``, ``500k``, ``1048576``."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*(|k|M|G|Ki|Mi|Gi)\s*", value)
    if m is None:
        raise ValueError(f"not a size: {value!r} (use e.g. 10Mi, 500Ki, 1048576)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def rotated_sort_key(name: str) -> str:
    """Rotated files sort by their timestamp suffix, compressed or not."""
    return name.removesuffix(COMPRESSED_SUFFIX)


def plan_rotation(size: int, max_size: int, rotated: list[str], max_files: int) -> RotationPlan:
    """Rotate once the live file reached ``max_size``; keep ``max_files`` files in all.

    ``rotated`` are the existing rotated files of the log (any order). Like kubelet, every rotated
    file but the newest one is compressed, and the oldest go first when there are too many.
    ``max_size <= 0`` turns rotation off.
    """
    if max_size <= 0 or size < max_size:
        return RotationPlan(False)
    ordered = sorted(rotated, key=rotated_sort_key)
    keep = max(0, max_files - 2)  # the live file + the one rotated now + `keep` older ones
    cut = max(0, len(ordered) - keep)
    remove, kept = ordered[:cut], ordered[cut:]
    compress = tuple(f for f in kept if not f.endswith(COMPRESSED_SUFFIX))
    return RotationPlan(True, tuple(remove), compress)


def rotated_name(path: str, now: float, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """``<path>.<YYYYmmdd-HHMMSS>`` (UTC); ``-1``, ``-2``... when rotated twice in one second."""
    base = f"{path}.{time.strftime(ROTATED_TIME_FORMAT, time.gmtime(now))}"
    name, n = base, 0
    while name in taken or name + COMPRESSED_SUFFIX in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def list_rotated(path: str) -> list[str]:
    """Existing rotated files of one log (``<path>.<stamp>[.gz]``), without temp files."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return []
    prefix = base + "."
    return [
        os.path.join(directory, n)
        for n in names
        if n.startswith(prefix) and n[len(prefix) : len(prefix) + 1].isdigit() and not n.endswith(".tmp")
    ]


def compress_file(path: str) -> int:
    """gzip ``path`` to ``path.gz`` (via a temp file, so a crash never leaves a half archive) and
    remove it; returns the compressed size."""
    import gzip
    import shutil

    tmp = path + COMPRESSED_SUFFIX + ".tmp"
    # level 1: fast, it runs once per rotation and a log compresses well anyway
    with open(path, "rb") as src, gzip.open(tmp, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 1024 * 1024)
    os.replace(tmp, path + COMPRESSED_SUFFIX)
    os.unlink(path)
    return os.stat(path + COMPRESSED_SUFFIX).st_size
