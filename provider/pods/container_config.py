"""Everything a container needs before it is created: volumes, env, its pod's own /etc files.

Resolves each container of a pod to a ``ContainerSpec`` (env from ConfigMaps/Secrets/downward
API, mounts of the pod's prepared volumes), or to the ``Waiting`` reason that keeps it from
being created (a missing object, a failed mount, a spec warmlet cannot map).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from cachetools import TTLCache

from common.clock import SYSTEM, Clock
from provider.config import PodConfig
from provider.events import WARNING, EventRecorder
from provider.metrics import VOLUME_REFRESHES
from provider.pod_etc import etc_hosts, resolv_conf, with_etc_mounts, write_etc_files
from provider.pods.state import JSON, PodState
from provider.podspec import container_spec, pod_hostname_and_domain
from provider.resolve_env import ConfigError, resolve_env
from provider.resolve_source import ObjectSource
from provider.resolve_volumes import MountError, container_mounts, prefetch_volume_sources, prepare_volumes
from provider.status import Waiting
from provider.termination_log import create_termination_log, with_termination_log
from provider.volume_refresh import refresh_volumes
from sandbox.backend import BackendCapabilities, ContainerSpec, PodSandboxSpec

log = logging.getLogger(__name__)

# How long a running pod's configMap/secret/downwardAPI/projected volumes may lag their sources
# at most before a pod sync re-syncs them (the controller syncs every pod once a minute anyway);
# a change of the pod's own labels/annotations re-syncs at its next sync.
VOLUME_REFRESH_SECONDS = 30.0


def _meta_key(pod: JSON) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return (
        repr(sorted((meta.get("labels") or {}).items())),
        repr(sorted((meta.get("annotations") or {}).items())),
    )


class ContainerConfigResolver:
    def __init__(
        self,
        pods: PodConfig,
        capabilities: BackendCapabilities,
        source: ObjectSource,
        events: EventRecorder,
        host_ip: str,
        node_allocatable: Mapping[str, str],
        clock: Clock = SYSTEM,
    ) -> None:
        self.capabilities = capabilities
        self.source = source
        self.events = events
        self.host_ip = host_ip
        self.allocatable = dict(node_allocatable)
        self.allow_host_path = pods.unsupported_policy == "ignore"
        self.volumes_dir = Path(pods.volumes_dir)
        self.cluster_domain = pods.cluster_domain  # /etc/hosts FQDN line of a pod with a subdomain
        self.memory_dir = pods.memory_volumes_dir  # None: <volumes_dir>-memory (tmpfs mounts)
        # uid -> the pod's labels/annotations at its last volume re-sync; an entry expiring is
        # what lets the next sync re-sync (bounded: no per-pod clean-up needed).
        self._refreshed: TTLCache[str, tuple[str, str]] = TTLCache(
            maxsize=100_000, ttl=VOLUME_REFRESH_SECONDS, timer=clock.monotonic
        )

    async def prefetch(self, pod: JSON) -> None:
        """What the pod's volumes will read from the API, asked for while its sandbox is acquired
        (a backend that runs no processes requests no token: nothing to prefetch there)."""
        if self.capabilities.runs_processes:
            await prefetch_volume_sources(pod, self.source)

    async def refresh_volumes(self, pod: JSON, st: PodState) -> None:
        """Keep a running pod's volumes in sync with their sources (kubelet's periodic volume
        re-mount): at most once per VOLUME_REFRESH_SECONDS, or when its labels/annotations changed."""
        if not self.capabilities.runs_processes:
            return  # no volume files were written: nothing reads them (prepare_volumes)
        uid = (pod.get("metadata") or {}).get("uid", "")
        key = _meta_key(pod)
        if st.sandbox is None or self._refreshed.get(uid) == key:
            return
        self._refreshed[uid] = key
        try:
            results = await refresh_volumes(
                pod,
                self.volumes_dir,
                self.source,
                st.sandbox.pod_ip,
                self.host_ip,
                self.allocatable,
                memory_dir=self.memory_dir,
            )
        except Exception as e:  # e.g. the API unreachable: the volumes stay as they are
            log.warning("volume refresh failed pod_uid=%s error=%r", uid, e)
            VOLUME_REFRESHES.labels(result="error").inc()
            return
        for result in results.values():
            VOLUME_REFRESHES.labels(result=result).inc()

    async def resolve(self, pod: JSON, st: PodState, names: list[str]) -> dict[str, ContainerSpec | Waiting]:
        """ContainerSpecs with env and mounts, or the reason a container must wait."""
        ip = st.sandbox.pod_ip if st.sandbox else ""
        spec = pod.get("spec") or {}
        out: dict[str, ContainerSpec | Waiting] = {}
        try:
            paths = await prepare_volumes(
                pod,
                self.volumes_dir,
                self.source,
                ip,
                self.host_ip,
                self.allocatable,
                allow_host_path=self.allow_host_path,
                memory_dir=self.memory_dir,
                # no process reads a file on a backend that runs none: sources checked, no
                # TokenRequest, nothing written (docs/configuration.md, simulated)
                materialize=self.capabilities.runs_processes,
            )
        except MountError as e:
            msg = f"MountVolume.SetUp failed: {e}"
            if st.mount_event != msg:
                st.mount_event = msg
                self.events.record(pod, WARNING, "FailedMount", msg)
            return {n: Waiting("ContainerCreating", msg) for n in names}
        self._refreshed[(pod.get("metadata") or {}).get("uid", "")] = _meta_key(pod)  # fresh now
        etc: dict[str, str] = {}
        if st.spec is not None and not spec.get("hostNetwork") and self.capabilities.runs_processes:
            etc = await asyncio.to_thread(self.etc_files, pod, st.spec, ip)
        inits = {c["name"] for c in spec.get("initContainers") or []}
        by_name = {
            c["name"]: c
            for part in ("initContainers", "containers", "ephemeralContainers")
            for c in spec.get(part) or []
        }
        ephemeral = {c["name"] for c in spec.get("ephemeralContainers") or []}
        for n in names:
            c = by_name[n]
            try:
                env = await resolve_env(pod, c, self.source, ip, self.host_ip, self.allocatable)
                # (no host directories behind the mounts without processes: none to resolve)
                mounts = (
                    with_etc_mounts(container_mounts(c, paths, {e.name: e.value for e in env}), etc)
                    if self.capabilities.runs_processes
                    else []
                )
                tpath = c.get("terminationMessagePath") or ""
                if tpath and self.capabilities.runs_processes:
                    tlog = await asyncio.to_thread(
                        create_termination_log, self.volumes_dir, pod["metadata"]["uid"], n, tpath
                    )
                    mounts = with_termination_log(mounts, tlog)
                out[n] = container_spec(c, pod, env, mounts, n in inits, is_ephemeral=n in ephemeral)
            except (ConfigError, ValueError, KeyError, TypeError) as e:
                # ValueError & co.: a spec the apiserver accepted but warmlet cannot map (e.g. a
                # quantity out of range); a clear Waiting reason instead of an exception loop.
                msg = str(e) if isinstance(e, ConfigError) else f"invalid container spec: {e!r}"
                out[n] = Waiting("CreateContainerConfigError", msg)
                self.events.record(pod, WARNING, "Failed", f"Error: {msg}")
                continue
        return out

    def etc_files(self, pod: JSON, spec: PodSandboxSpec, pod_ip: str) -> dict[str, str]:
        """This pod's own /etc/hosts, resolv.conf, hostname (never the reused sandbox's files)."""
        dns = spec.dns
        if dns.servers:
            resolv = resolv_conf(dns.servers, dns.searches, dns.options)
        else:  # dnsPolicy Default: the node's resolv.conf, as the runtime would copy it
            try:
                resolv = Path("/etc/resolv.conf").read_text()
            except OSError:
                resolv = ""
        hostname = spec.hostname or spec.name
        short, domain = pod_hostname_and_domain(pod, self.cluster_domain)
        aliases = (pod.get("spec") or {}).get("hostAliases") or []
        return write_etc_files(
            self.volumes_dir,
            spec.uid,
            {
                "/etc/hosts": etc_hosts(short, pod_ip, aliases, domain),
                "/etc/resolv.conf": resolv,
                "/etc/hostname": hostname + "\n",
            },
        )
