"""Pod volumes as host directories under ``<volumes_dir>/<uid>/volumes/<plugin>/<name>``.

configMap, secret, downwardAPI, projected (incl. service-account tokens via TokenRequest)
and emptyDir are materialized on the host and handed to the backend as Mounts; a fresh
directory per pod uid means emptyDir contents are never shared between pods. A missing
source raises MountError (kubelet's FailedMount: the pod stays ContainerCreating).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from provider.resolve_env import ConfigError, field_value, resource_value
from provider.resolve_source import ObjectSource
from sandbox.backend import Mount

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
) -> Files | None:
    """The files of one volume; None for a plain directory (emptyDir)."""
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
            elif "serviceAccountToken" in src:
                t = src["serviceAccountToken"]
                sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
                audiences = [t["audience"]] if t.get("audience") else []
                try:
                    token = await source.token(ns, sa, audiences, int(t.get("expirationSeconds", 3607)), pod)
                except Exception as e:
                    raise MountError(f"failed to fetch token: {e}") from None
                files[t.get("path", "token")] = (token.encode(), 0o600 if "defaultMode" not in v else mode)
        return files
    return None


def _write(root: Path, files: Files | None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    if files is None:
        return
    for rel, (content, mode) in files.items():
        path = (root / rel).resolve()
        if root.resolve() not in path.parents:
            raise MountError(f"invalid path {rel!r} escapes the volume")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)


async def prepare_volumes(
    pod: Mapping[str, Any],
    volumes_dir: Path,
    source: ObjectSource,
    pod_ip: str,
    host_ip: str,
    node_allocatable: Mapping[str, str],
    allow_host_path: bool = False,
) -> dict[str, str]:
    """Materialize every volume; returns volume name -> host directory."""
    meta = pod.get("metadata") or {}
    base = pod_dir(volumes_dir, meta.get("uid", "")) / "volumes"
    paths: dict[str, str] = {}
    writes: list[tuple[Path, Files | None]] = []
    for vol in (pod.get("spec") or {}).get("volumes") or []:
        name = vol["name"]
        if "hostPath" in vol:
            if allow_host_path:
                paths[name] = vol["hostPath"].get("path", "")
            continue
        plugin = next((PLUGIN_DIRS[k] for k in PLUGIN_DIRS if k in vol), None)
        if plugin is None:
            continue  # unsupported volume type (PVC, CSI, ...): not mounted
        files = await volume_files(pod, vol, source, pod_ip, host_ip, node_allocatable)
        root = base / plugin / name
        writes.append((root, files))
        paths[name] = str(root)
    if writes:
        await asyncio.to_thread(_write_all, writes)
    return paths


def _write_all(writes: list[tuple[Path, Files | None]]) -> None:
    for root, files in writes:
        _write(root, files)


def container_mounts(container: Mapping[str, Any], volume_paths: Mapping[str, str]) -> list[Mount]:
    mounts = []
    for vm in container.get("volumeMounts") or []:
        host = volume_paths.get(vm["name"])
        if host is None:
            continue
        if vm.get("subPath"):
            host = os.path.join(host, vm["subPath"])
            if not os.path.exists(host):
                Path(host).mkdir(parents=True, exist_ok=True)
        mounts.append(
            Mount(container_path=vm["mountPath"], host_path=host, read_only=bool(vm.get("readOnly")))
        )
    return mounts


def scratch_dirs(pod: Mapping[str, Any], volumes_dir: Path) -> list[str]:
    """Host directories of the pod's emptyDir volumes (the backend wipes them on reuse)."""
    uid = (pod.get("metadata") or {}).get("uid", "")
    base = pod_dir(volumes_dir, uid) / "volumes" / PLUGIN_DIRS["emptyDir"]
    return [str(base / v["name"]) for v in (pod.get("spec") or {}).get("volumes") or [] if "emptyDir" in v]


def remove_pod_dir(volumes_dir: Path, uid: str) -> None:
    """Delete a pod's volumes (emptyDir contents never outlive the pod)."""
    if uid:
        shutil.rmtree(pod_dir(volumes_dir, uid), ignore_errors=True)
