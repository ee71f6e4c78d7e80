"""Pod volumes as host directories under ``<root>/<uid>/volumes/<plugin>/<name>``.

configMap, secret, downwardAPI, projected (incl. service-account tokens via TokenRequest)
and emptyDir are materialized on the host and handed to the backend as Mounts; a fresh
directory per pod uid means emptyDir contents are never shared between pods. A missing
source raises MountError (kubelet's FailedMount: the pod stays ContainerCreating).

Memory-backed volumes (secret, projected, downwardAPI — like kubelet — and emptyDir with
``medium: Memory``) live under a separate root (``pods.memory_volumes_dir``), never on the
disk ``volumes_dir``: secrets and tokens must not reach a disk. The root must be on tmpfs/ramfs
(checked with statfs); if it is not, warmlet mounts one tmpfs there (needs CAP_SYS_ADMIN). One
mount per node, not one per volume as kubelet does: a node with 10,000 pods would otherwise
carry 10,000 mounts (every mount-table reader on the host slows down). If neither works the pod
gets a FailedMount instead of a disk write.
``remove_pod_dir`` unmounts and deletes them; ``remove_orphan_pod_dirs`` does it at start
for pods deleted while warmlet was down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import shutil
import stat
from collections.abc import Awaitable, Iterable, Mapping
from pathlib import Path
from typing import Any

from provider.atomic_writer import PayloadError, write_payload
from provider.podspec import expand
from provider.quantity import parse_quantity
from provider.resolve_env import ConfigError, field_value, resource_value
from provider.resolve_source import ObjectSource
from provider.tmpfs import is_memory_backed, is_our_mount, mount_tmpfs, unmount
from provider.volume_ownership import set_volume_ownership
from sandbox.backend import Mount

log = logging.getLogger(__name__)

JSON = dict[str, Any]
Files = dict[str, tuple[bytes, int]]  # relative path -> (content, mode)


class MountError(Exception):
    """A volume cannot be set up yet (FailedMount)."""


PLUGIN_DIRS = {
    "emptyDir": "kubernetes.io~empty-dir",
    "configMap": "kubernetes.io~configmap",
    "secret": "kubernetes.io~secret",
    "downwardAPI": "kubernetes.io~downward-api",
    "projected": "kubernetes.io~projected",
}


def pod_dir(volumes_dir: Path, uid: str) -> Path:
    return volumes_dir / uid


def memory_root(volumes_dir: Path, memory_dir: Path | None = None) -> Path:
    """Where memory-backed volumes live: the configured dir, else ``<volumes_dir>-memory``."""
    return memory_dir if memory_dir is not None else volumes_dir.with_name(volumes_dir.name + "-memory")


def is_memory_volume(volume: Mapping[str, Any]) -> bool:
    """Volumes kubelet backs by memory: secrets, tokens (projected), downward API, emptyDir Memory."""
    if "secret" in volume or "projected" in volume or "downwardAPI" in volume:
        return True
    ed = volume.get("emptyDir")
    return isinstance(ed, Mapping) and ed.get("medium") == "Memory"


def volume_root(
    volumes_dir: Path, memory_dir: Path | None, uid: str, volume: Mapping[str, Any]
) -> Path | None:
    """The host directory of one volume of pod ``uid`` (None: not a volume warmlet materializes)."""
    plugin = next((PLUGIN_DIRS[k] for k in PLUGIN_DIRS if k in volume), None)
    if plugin is None:
        return None
    base = memory_root(volumes_dir, memory_dir) if is_memory_volume(volume) else volumes_dir
    return pod_dir(base, uid) / "volumes" / plugin / str(volume["name"])


def ensure_memory_dir(root: Path, size_bytes: int | None = None) -> None:
    """Make ``root`` a directory on memory-backed storage, or raise MountError (never fall back to disk)."""
    root.mkdir(parents=True, exist_ok=True)
    if is_memory_backed(root):
        return  # already a tmpfs mount of ours, or a tmpfs-backed memory root
    try:
        mount_tmpfs(root, size_bytes)
    except OSError as e:
        raise MountError(
            f"memory-backed storage (tmpfs) unavailable for {root}: mount failed ({e.strerror}); "
            "refusing to write secrets to disk (run warmlet with CAP_SYS_ADMIN or set "
            "pods.memory_volumes_dir to a tmpfs directory)"
        ) from None
    if not is_memory_backed(root):  # pragma: no cover - a mount that is not tmpfs
        unmount(str(root))
        raise MountError(f"tmpfs mount at {root} is not memory-backed")


def _items(
    data: Mapping[str, bytes], items: list[JSON] | None, default_mode: int, what: str, optional: bool
) -> Files:
    if not items:
        return {k: (v, default_mode) for k, v in data.items()}
    out: Files = {}
    for it in items:
        if it["key"] not in data:
            if optional:
                continue
            raise MountError(f"configmap/secret {what}: key {it['key']} not found")
        out[it["path"]] = (data[it["key"]], it.get("mode", default_mode))
    return out


async def _configmap_files(source: ObjectSource, ns: str, v: Mapping[str, Any], default_mode: int) -> Files:
    name = v.get("name", "")
    obj = await source.configmap(ns, name)
    if obj is None:
        if v.get("optional"):
            return {}
        raise MountError(f'configmap "{name}" not found')
    data = {k: str(x).encode() for k, x in (obj.get("data") or {}).items()}
    data.update({k: base64.b64decode(x) for k, x in (obj.get("binaryData") or {}).items()})
    return _items(data, v.get("items"), default_mode, f"{ns}/{name}", bool(v.get("optional")))


async def _secret_files(
    source: ObjectSource, ns: str, name: str, v: Mapping[str, Any], default_mode: int
) -> Files:
    obj = await source.secret(ns, name)
    if obj is None:
        if v.get("optional"):
            return {}
        raise MountError(f'secret "{name}" not found')
    data = {k: base64.b64decode(x) for k, x in (obj.get("data") or {}).items()}
    return _items(data, v.get("items"), default_mode, f"{ns}/{name}", bool(v.get("optional")))


def _downward_files(
    pod: Mapping[str, Any],
    items: list[JSON],
    default_mode: int,
    pod_ip: str,
    host_ip: str,
    node_allocatable: Mapping[str, str],
) -> Files:
    spec = pod.get("spec") or {}
    containers = {
        c["name"]: c for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    }
    out: Files = {}
    for it in items:
        try:
            if "fieldRef" in it:
                value = field_value(pod, it["fieldRef"]["fieldPath"], pod_ip, host_ip)
            else:
                rf = it["resourceFieldRef"]
                c = containers.get(rf.get("containerName", ""), {})
                value = resource_value(c, rf["resource"], rf.get("divisor"), node_allocatable)
        except ConfigError as e:
            raise MountError(str(e)) from None
        out[it["path"]] = (value.encode(), it.get("mode", default_mode))
    return out


async def volume_files(
    pod: Mapping[str, Any],
    volume: Mapping[str, Any],
    source: ObjectSource,
    pod_ip: str,
    host_ip: str,
    node_allocatable: Mapping[str, str],
    tokens: bool = True,
) -> Files | None:
    """The files of one volume; None for a plain directory (emptyDir). ``tokens`` False: no
    service-account token is requested (nothing will read it: a backend that runs no processes)."""
    meta = pod.get("metadata") or {}
    ns = meta.get("namespace", "default")
    if "emptyDir" in volume:
        return None
    if "configMap" in volume:
        v = volume["configMap"]
        return await _configmap_files(source, ns, v, v.get("defaultMode", 0o644))
    if "secret" in volume:
        v = volume["secret"]
        return await _secret_files(source, ns, v.get("secretName", ""), v, v.get("defaultMode", 0o644))
    if "downwardAPI" in volume:
        v = volume["downwardAPI"]
        return _downward_files(
            pod, v.get("items") or [], v.get("defaultMode", 0o644), pod_ip, host_ip, node_allocatable
        )
    if "projected" in volume:
        v = volume["projected"]
        mode = v.get("defaultMode", 0o644)
        files: Files = {}
        for src in v.get("sources") or []:
            if "configMap" in src:
                files.update(await _configmap_files(source, ns, src["configMap"], mode))
            elif "secret" in src:
                s = src["secret"]
                files.update(await _secret_files(source, ns, s.get("name", ""), s, mode))
            elif "downwardAPI" in src:
                files.update(
                    _downward_files(
                        pod, src["downwardAPI"].get("items") or [], mode, pod_ip, host_ip, node_allocatable
                    )
                )
            elif "serviceAccountToken" in src and tokens:
                t = src["serviceAccountToken"]
                try:
                    token = await source.token(ns, *_token_args(pod, t), pod)
                except Exception as e:
                    raise MountError(f"failed to fetch token: {e}") from None
                files[t.get("path", "token")] = (token.encode(), 0o600 if "defaultMode" not in v else mode)
        return files
    return None


def _token_args(pod: Mapping[str, Any], t: Mapping[str, Any]) -> tuple[str, list[str], int]:
    """(service account, audiences, expirationSeconds) of one projected serviceAccountToken."""
    sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    return sa, [t["audience"]] if t.get("audience") else [], int(t.get("expirationSeconds", 3607))


async def prefetch_volume_sources(pod: Mapping[str, Any], source: ObjectSource) -> None:
    """Ask the API now for what the pod's volumes will read (configMaps, secrets, projected
    service-account tokens), so that their resolution finds it in the source's caches. Run while
    the pod's sandbox is acquired: the TokenRequest of a warm start then costs no time of its
    own. Errors are left to the resolution, which reports them precisely."""
    ns = (pod.get("metadata") or {}).get("namespace", "default")
    calls: list[Awaitable[Any]] = []
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        sources = [vol] if "configMap" in vol or "secret" in vol else []
        sources += (vol.get("projected") or {}).get("sources") or []
        for src in sources:
            if "configMap" in src:
                calls.append(source.configmap(ns, src["configMap"].get("name", "")))
            elif "secret" in src:
                s = src["secret"]
                calls.append(source.secret(ns, s.get("secretName") or s.get("name", "")))
            elif "serviceAccountToken" in src:
                calls.append(source.token(ns, *_token_args(pod, src["serviceAccountToken"]), pod))
    if calls:
        await asyncio.gather(*calls, return_exceptions=True)


EMPTY_DIR_MODE = 0o777  # kubelet's emptyDir: any user of the pod may write to it
# A Memory emptyDir is a tmpfs root for kubelet: sticky too (tmpfs' default 1777, kept by its chmod).
MEMORY_EMPTY_DIR_MODE = 0o1777


def memory_size_limit(volume: Mapping[str, Any], node_allocatable: Mapping[str, str]) -> int | None:
    """Bytes of a Memory emptyDir's own tmpfs: its ``sizeLimit`` capped at the node's allocatable
    memory (kubelet's calculateEmptyDirMemorySize); None without a sizeLimit (the shared root)."""
    ed = volume.get("emptyDir")
    if not isinstance(ed, Mapping) or ed.get("medium") != "Memory" or not ed.get("sizeLimit"):
        return None
    size = parse_quantity(str(ed["sizeLimit"]))
    if size <= 0:
        return None
    alloc = node_allocatable.get("memory")
    if alloc is not None and 0 < parse_quantity(alloc) < size:
        size = parse_quantity(alloc)
    return int(size)


def _write(
    root: Path,
    files: Files | None,
    memory: bool = False,
    fs_group: int | None = None,
    size: int | None = None,
) -> None:
    new = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    if new and size is not None:  # a sized Memory emptyDir: its own tmpfs, as kubelet mounts it
        try:
            mount_tmpfs(root, size)
        except OSError as e:
            root.rmdir()
            raise MountError(f"tmpfs of sizeLimit {size} bytes at {root} failed: {e.strerror}") from None
    if memory and not is_memory_backed(root):  # the root was checked: only a race gets here
        raise MountError(f"{root} is not memory-backed; refusing to write secrets to disk")
    if files is None:  # emptyDir: set up once (a container's later chmod of it is kept)
        if new:
            os.chmod(root, MEMORY_EMPTY_DIR_MODE if memory else EMPTY_DIR_MODE)
            set_volume_ownership(root, fs_group, read_only=False)
        return
    try:
        write_payload(root, files, lambda r: set_volume_ownership(r, fs_group, read_only=True))
    except PayloadError as e:
        raise MountError(f"{e}; it would escape the volume") from None


def fs_group_of(pod: Mapping[str, Any]) -> int | None:
    """The pod's ``securityContext.fsGroup`` (None: volumes keep root's group)."""
    group = ((pod.get("spec") or {}).get("securityContext") or {}).get("fsGroup")
    return int(group) if group is not None else None


async def prepare_volumes(
    pod: Mapping[str, Any],
    volumes_dir: Path,
    source: ObjectSource,
    pod_ip: str,
    host_ip: str,
    node_allocatable: Mapping[str, str],
    allow_host_path: bool = False,
    memory_dir: Path | None = None,
    materialize: bool = True,
) -> dict[str, str]:
    """Materialize every volume; returns volume name -> host directory. ``materialize`` False (a
    backend that runs no processes): the sources are still checked (a missing ConfigMap or Secret
    is a FailedMount as on kubelet), but no token is requested and nothing is written."""
    uid = (pod.get("metadata") or {}).get("uid", "")
    if not uid or "/" in uid or uid in (".", ".."):
        raise MountError(f"invalid pod uid {uid!r}")
    paths: dict[str, str] = {}
    writes: list[tuple[Path, Files | None, bool, int | None]] = []
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name = vol["name"]
        if "hostPath" in vol:
            if allow_host_path:
                paths[name] = vol["hostPath"].get("path", "")
            continue
        root = volume_root(volumes_dir, memory_dir, uid, vol)
        if root is None:
            continue  # unsupported volume type (PVC, CSI, ...): rejected by validation unless ignored
        files = await volume_files(pod, vol, source, pod_ip, host_ip, node_allocatable, tokens=materialize)
        writes.append((root, files, is_memory_volume(vol), memory_size_limit(vol, node_allocatable)))
        paths[name] = str(root)
    if writes and materialize:
        await asyncio.to_thread(_write_all, writes, memory_root(volumes_dir, memory_dir), fs_group_of(pod))
    return paths


def _write_all(
    writes: list[tuple[Path, Files | None, bool, int | None]], mem_root: Path, fs_group: int | None
) -> None:
    if any(memory for _, _, memory, _ in writes):
        ensure_memory_dir(mem_root)
    for root, files, memory, size in writes:
        _write(root, files, memory, fs_group, size)


def subpath_host_path(volume_root_path: str, sub_path: str) -> str:
    """The host path of a volumeMount's subPath, guaranteed inside the volume.

    The apiserver already refuses absolute and ``..`` subPaths, but not ``subPathExpr`` after
    expansion, and not a symlink a container planted in a writable volume (``ln -s / x`` then
    ``subPath: x``, CVE-2017-1002101): resolve every symlink and refuse anything outside.
    """
    if os.path.isabs(sub_path) or any(part == ".." for part in sub_path.split("/")) or "\x00" in sub_path:
        raise ConfigError(f"invalid subPath {sub_path!r}: must be a relative path without '..'")
    root = os.path.realpath(volume_root_path)
    host = os.path.realpath(os.path.join(root, sub_path))
    if host != root and not host.startswith(root + os.sep):
        raise ConfigError(f"subPath {sub_path!r} resolves outside of its volume")
    if not os.path.lexists(host):
        # kubelet's SafeMakeDir: every missing component gets the volume root's mode, setgid
        # (fsGroup) and sticky (tmpfs) bits included.
        perm = stat.S_IMODE(os.stat(root).st_mode)
        missing: list[str] = []
        at = host
        while at != root and not os.path.lexists(at):
            missing.append(at)
            at = os.path.dirname(at)
        Path(host).mkdir(parents=True, exist_ok=True)
        for created in missing:
            os.chmod(created, perm)
        # mkdir followed no planted symlink (every component was resolved above), but check again.
        if os.path.realpath(host) != host:
            raise ConfigError(f"subPath {sub_path!r} resolves outside of its volume")
    return host


def container_mounts(
    container: Mapping[str, Any],
    volume_paths: Mapping[str, str],
    env: Mapping[str, str] | None = None,
) -> list[Mount]:
    """The container's Mounts; ConfigError (CreateContainerConfigError) for a bad subPath."""
    mounts = []
    for vm in container.get("volumeMounts") or []:
        host = volume_paths.get(vm["name"])
        if host is None:
            continue
        sub = vm.get("subPath") or ""
        if vm.get("subPathExpr"):
            sub = expand(vm["subPathExpr"], env or {})
        if sub:
            try:
                host = subpath_host_path(host, sub)
            except OSError as e:
                raise ConfigError(
                    f"failed to prepare subPath {sub!r} for volumeMount {vm['name']!r}: {e}"
                ) from None
        mounts.append(
            Mount(container_path=vm["mountPath"], host_path=host, read_only=bool(vm.get("readOnly")))
        )
    return mounts


def scratch_dirs(pod: Mapping[str, Any], volumes_dir: Path, memory_dir: Path | None = None) -> list[str]:
    """Host directories of the pod's emptyDir volumes (the backend wipes them on reuse)."""
    uid = (pod.get("metadata") or {}).get("uid", "")
    out: list[str] = []
    for v in (pod.get("spec") or {}).get("volumes") or []:
        if "emptyDir" in v:
            root = volume_root(volumes_dir, memory_dir, uid, v)
            if root is not None:
                out.append(str(root))
    return out


def _remove_tree(path: Path) -> None:
    """Delete ``path``, unmounting any mount below it first (never deletes into a live mount)."""
    if not path.exists():
        return
    stuck = False
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if os.path.ismount(full):  # e.g. a per-volume tmpfs of an earlier warmlet version
                try:
                    unmount(full)
                except OSError as e:
                    stuck = True
                    log.warning("unmount failed path=%s error=%s", full, e.strerror)
    if stuck:
        log.warning("pod volume dir still has mounts, not deleting path=%s", path)
        return
    shutil.rmtree(path, ignore_errors=True)


def remove_pod_dir(volumes_dir: Path, uid: str, memory_dir: Path | None = None) -> None:
    """Delete a pod's volumes (emptyDir contents never outlive the pod; tmpfs mounts are unmounted)."""
    if not uid or "/" in uid or uid in (".", ".."):
        return
    _remove_tree(pod_dir(memory_root(volumes_dir, memory_dir), uid))
    _remove_tree(pod_dir(volumes_dir, uid))


_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def remove_orphan_pod_dirs(
    volumes_dir: Path, live_uids: Iterable[str], memory_dir: Path | None = None
) -> list[str]:
    """At start: remove the volume dirs of pods that no longer exist (deleted while warmlet was down)."""
    live = set(live_uids)
    removed: list[str] = []
    for base in (memory_root(volumes_dir, memory_dir), volumes_dir):
        with contextlib.suppress(OSError):
            for entry in os.listdir(base):
                # only pod-uid dirs: a memory dir pointed at a shared tmpfs keeps everything else
                if entry not in live and _UID.match(entry) and (base / entry).is_dir():
                    remove_pod_dir(volumes_dir, entry, memory_dir)
                    removed.append(entry)
    return sorted(set(removed))


def release_memory_root(volumes_dir: Path, memory_dir: Path | None = None) -> bool:
    """At a clean stop: unmount warmlet's tmpfs at the memory root if no pod volume is left in it.

    A root still holding pod dirs stays mounted: their containers keep running across a restart.
    """
    root = memory_root(volumes_dir, memory_dir)
    try:
        if not os.path.ismount(root) or os.listdir(root) or not is_our_mount(root):
            return False
        unmount(str(root))
        root.rmdir()
        return True
    except OSError as e:
        log.warning("memory root not released path=%s error=%s", root, e.strerror)
        return False
