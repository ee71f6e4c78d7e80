"""A pod's ``fsGroup`` applied to its volumes, as kubelet's SetVolumeOwnership does.

Every file and directory of the volume gets group ``fsGroup``; files get group read (and write
unless the volume is read-only: configMap, secret, downwardAPI, projected), directories also
group execute and setgid so new files inherit the group. Symlinks are re-grouped, never chmod'ed
(chmod would follow them and override the mode the volume set on its target).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

RW_MASK = 0o660
RO_MASK = 0o440
EXEC_MASK = 0o110


def owned_mode(mode: int, is_dir: bool, read_only: bool) -> int:
    """The permission bits kubelet gives an entry of an fsGroup volume (pure)."""
    mask = RO_MASK if read_only else RW_MASK
    if is_dir:
        mask |= stat.S_ISGID | EXEC_MASK
    return stat.S_IMODE(mode) | mask


def set_volume_ownership(root: Path, fs_group: int | None, read_only: bool) -> None:
    """Apply ``fs_group`` to ``root`` and everything below it (nothing without an fsGroup)."""
    if fs_group is None:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            if name == "." and dirpath != str(root):
                continue  # each directory once: as an entry of its parent
            st = os.lstat(path)
            os.lchown(path, -1, fs_group)
            if stat.S_ISLNK(st.st_mode):
                continue
            os.chmod(path, owned_mode(st.st_mode, stat.S_ISDIR(st.st_mode), read_only))
