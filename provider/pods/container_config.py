"""Everything a container needs before it is created: volumes, env, its pod's own /etc files.

Resolves each container of a pod to a ``ContainerSpec`` (env from ConfigMaps/Secrets/downward
API, mounts of the pod's prepared volumes), or to the ``Waiting`` reason that keeps it from
being created (a missing object, a failed mount, a spec warmlet cannot map).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from provider.config import PodConfig
from provider.events import WARNING, EventRecorder
from provider.pod_etc import etc_hosts, resolv_conf, with_etc_mounts, write_etc_files
from provider.pods.state import JSON, PodState
from provider.podspec import container_spec, pod_hostname_and_domain
from provider.resolve_env import ConfigError, resolve_env
from provider.resolve_source import ObjectSource
from provider.resolve_volumes import MountError, container_mounts, prepare_volumes
from provider.status import Waiting
from provider.termination_log import create_termination_log, with_termination_log
from sandbox.backend import BackendCapabilities, ContainerSpec, PodSandboxSpec


class ContainerConfigResolver:
    def __init__(
        self,
        pods: PodConfig,
        capabilities: BackendCapabilities,
        source: ObjectSource,
        events: EventRecorder,
        host_ip: str,
        node_allocatable: Mapping[str, str],
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
            )
        except MountError as e:
            msg = f"MountVolume.SetUp failed: {e}"
            if st.mount_event != msg:
                st.mount_event = msg
                self.events.record(pod, WARNING, "FailedMount", msg)
            return {n: Waiting("ContainerCreating", msg) for n in names}
        etc: dict[str, str] = {}
        if st.spec is not None and not spec.get("hostNetwork") and self.capabilities.runs_processes:
            etc = await asyncio.to_thread(self.etc_files, pod, st.spec, ip)
        inits = {c["name"] for c in spec.get("initContainers") or []}
        by_name = {
            c["name"]: c for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
        }
        for n in names:
            c = by_name[n]
            try:
                env = await resolve_env(pod, c, self.source, ip, self.host_ip, self.allocatable)
                mounts = with_etc_mounts(container_mounts(c, paths, {e.name: e.value for e in env}), etc)
                tpath = c.get("terminationMessagePath") or ""
                if tpath and self.capabilities.runs_processes:
                    tlog = await asyncio.to_thread(
                        create_termination_log, self.volumes_dir, pod["metadata"]["uid"], n, tpath
                    )
                    mounts = with_termination_log(mounts, tlog)
                out[n] = container_spec(c, pod, env, mounts, n in inits)
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
