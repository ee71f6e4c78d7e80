"""A volume's files swapped in all at once through a ``..data`` symlink (kubelet's atomic writer).

The layout kubelet uses for configMap, secret, downwardAPI and projected volumes: the files live
in a hidden timestamped directory ``..<timestamp>``; ``..data`` links to it; every top-level name
of the payload is a symlink ``name -> ..data/name``. An update writes a new timestamped
directory, renames a fresh ``..data`` link over the old one (one rename: a container reading the
volume sees the old set or the new set, never a mix), adds and removes the top-level links and
deletes the old directory. An unchanged payload (same paths, same bytes) writes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

DATA_DIR = "..data"
_DATA_TMP = "..data_tmp"

Payload = Mapping[str, tuple[bytes, int]]  # relative path -> (content, mode)


class PayloadError(ValueError):
    """A payload path that would escape the volume or collide with the writer's own names."""


def validate_path(rel: str) -> None:
    """Kubelet's rules: relative, no ``..`` component, not starting with ``..``, not empty."""
    if not rel or os.path.isabs(rel) or "\x00" in rel:
        raise PayloadError(f"invalid path {rel!r}: must be a non-empty relative path")
    if rel.startswith(".."):
        raise PayloadError(f"invalid path {rel!r}: must not start with '..'")
    if any(part == ".." for part in rel.split("/")):
        raise PayloadError(f"invalid path {rel!r}: must not contain '..'")


def _top(rel: str) -> str:
    return rel.strip("/").split("/", 1)[0]


def _same_payload(data_dir: Path, payload: Payload) -> bool:
    """The directory holds exactly the payload's paths with the same bytes (modes not compared:
    fsGroup ownership adds bits to them, as kubelet's writer also compares content only)."""
    present: set[str] = set()
    for dirpath, _, filenames in os.walk(data_dir):
        for f in filenames:
            present.add(os.path.relpath(os.path.join(dirpath, f), data_dir))
    if present != {os.path.normpath(p) for p in payload}:
        return False
    try:
        return all((data_dir / rel).read_bytes() == content for rel, (content, _) in payload.items())
    except OSError:
        return False


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def write_payload(root: Path, payload: Payload, set_perms: Callable[[Path], None] | None = None) -> bool:
    """Make ``root`` hold ``payload``; True when something was written (False: already current).

    ``set_perms(root)`` runs after the new files are written and before they become visible
    (fsGroup ownership). Raises :class:`PayloadError` for an invalid path, ``OSError`` for I/O.
    """
    for rel in payload:
        validate_path(rel)
    root.mkdir(parents=True, exist_ok=True)
    data_link = root / DATA_DIR
    old_name = os.readlink(data_link) if data_link.is_symlink() else None
    old_dir = root / old_name if old_name else None
    tops = {_top(rel) for rel in payload}
    if old_dir is not None and old_dir.is_dir() and _same_payload(old_dir, payload):
        _link_tops(root, tops)  # a link lost (or an older non-atomic layout): repair, nothing else
        return False
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    new_dir = Path(tempfile.mkdtemp(prefix=stamp, dir=root))
    os.chmod(new_dir, 0o755)
    for rel, (content, mode) in payload.items():
        path = new_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.chmod(path, mode)
    if set_perms is not None:
        set_perms(root)
    tmp_link = root / _DATA_TMP
    if tmp_link.is_symlink() or tmp_link.exists():
        _remove(tmp_link)
    os.symlink(new_dir.name, tmp_link)
    os.rename(tmp_link, data_link)  # the swap
    _link_tops(root, tops)
    if old_dir is not None and old_dir.is_dir():
        old_tops = set(os.listdir(old_dir))
        for name in old_tops - tops:
            link = root / name
            if link.is_symlink():
                link.unlink()
        shutil.rmtree(old_dir, ignore_errors=True)
    return True


def _link_tops(root: Path, tops: set[str]) -> None:
    for name in tops:
        link = root / name
        target = f"{DATA_DIR}/{name}"
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink() or link.exists():
            _remove(link)  # a plain file or directory of a non-atomic layout
        os.symlink(target, link)
