"""Running pods' configMap/secret/downwardAPI/projected volumes kept in sync with their sources.

kubelet re-mounts these volumes on its periodic pod syncs: an optional ConfigMap created later
appears, an updated key is swapped in (atomic writer, ``..data``), changed labels/annotations
reach downward API files. Unchanged contents write nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provider.atomic_writer import DATA_DIR, PayloadError, write_payload
from provider.resolve_source import ObjectSource
from provider.resolve_volumes import Files, MountError, fs_group_of, volume_files, volume_root
from provider.volume_ownership import set_volume_ownership

log = logging.getLogger(__name__)


def refreshable(volume: Mapping[str, Any]) -> bool:
    """Volumes kept in sync with their sources after set-up (not emptyDir; not a projected
    volume with a service-account token: a TokenRequest per pod per re-sync is not what kubelet
    does, it rotates tokens by their own expiry)."""
    if "projected" in volume:
        sources = (volume["projected"] or {}).get("sources") or []
        return not any("serviceAccountToken" in s for s in sources)
    return "configMap" in volume or "secret" in volume or "downwardAPI" in volume


async def refresh_volumes(
    pod: Mapping[str, Any],
    volumes_dir: Path,
    source: ObjectSource,
    pod_ip: str,
    host_ip: str,
    node_allocatable: Mapping[str, str],
    memory_dir: Path | None = None,
) -> dict[str, str]:
    """Re-sync a running pod's set-up configMap/secret/downwardAPI/projected volumes with their
    sources (an optional object created later, an updated key, changed labels): volume name ->
    ``updated`` / ``unchanged`` / ``error``. Unchanged contents write nothing; a source that
    fails (a deleted non-optional object) leaves the volume as it is, as kubelet does."""
    uid = (pod.get("metadata") or {}).get("uid", "")
    if not uid or "/" in uid or uid in (".", ".."):
        return {}
    out: dict[str, str] = {}
    writes: list[tuple[str, Path, Files]] = []
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        root = volume_root(volumes_dir, memory_dir, uid, vol)
        if root is None or not refreshable(vol):
            continue
        try:
            files = await volume_files(pod, vol, source, pod_ip, host_ip, node_allocatable)
        except MountError as e:
            log.warning("volume refresh failed pod_uid=%s volume=%s error=%s", uid, vol["name"], e)
            out[vol["name"]] = "error"
            continue
        if files is not None:
            writes.append((vol["name"], root, files))
    if writes:
        out.update(await asyncio.to_thread(_rewrite, writes, fs_group_of(pod)))
    return out


def _rewrite(writes: list[tuple[str, Path, Files]], fs_group: int | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, root, files in writes:
        if not (root / DATA_DIR).is_symlink():
            continue  # not set up (yet, or by an older layout): prepare_volumes' job
        try:
            changed = write_payload(root, files, lambda r: set_volume_ownership(r, fs_group, read_only=True))
        except (OSError, PayloadError) as e:
            log.warning("volume refresh failed path=%s error=%s", root, e)
            out[name] = "error"
            continue
        out[name] = "updated" if changed else "unchanged"
    return out
