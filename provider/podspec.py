"""Pod JSON → the plain typed specs that cross the backend seam (pure)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from provider.quantity import cpu_milli, to_int
from sandbox.backend import (
    ContainerSecurity,
    ContainerSpec,
    DNSConfig,
    EnvVar,
    Mount,
    PodSandboxSpec,
    PodSecurity,
    PortMapping,
    PullPolicy,
    Resources,
)

JSON = dict[str, Any]

MIN_GRACE_SECONDS = 2.0  # kubelet's minimumGracePeriodInSeconds


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    return float(value)


def termination_grace_seconds(pod: Mapping[str, Any], probe_grace: Any = None) -> float:
    """The grace period of a container kill (kubelet's setTerminationGracePeriod): the pod's
    deletionGracePeriodSeconds while it is being deleted, else the failed probe's own
    terminationGracePeriodSeconds (``probe_grace``) when set, else the pod's
    terminationGracePeriodSeconds, else kubelet's minimum."""
    deletion = _seconds((pod.get("metadata") or {}).get("deletionGracePeriodSeconds"))
    if deletion is not None:
        return deletion
    spec_grace = _seconds((pod.get("spec") or {}).get("terminationGracePeriodSeconds"))
    if spec_grace is None:
        return MIN_GRACE_SECONDS
    probe = _seconds(probe_grace)
    return probe if probe is not None else spec_grace


def dns_config(pod: Mapping[str, Any], cluster_dns: Sequence[str], cluster_domain: str) -> DNSConfig:
    """resolv.conf contents per dnsPolicy (ClusterFirst, Default, None) merged with dnsConfig."""
    spec = pod.get("spec") or {}
    ns = (pod.get("metadata") or {}).get("namespace", "default")
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    if policy == "ClusterFirstWithHostNet" and not spec.get("hostNetwork"):
        policy = "ClusterFirst"
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        servers = list(cluster_dns)
        searches = [f"{ns}.svc.{cluster_domain}", f"svc.{cluster_domain}", cluster_domain]
        options = ["ndots:5"]
    extra = spec.get("dnsConfig") or {}
    servers += [s for s in extra.get("nameservers") or [] if s not in servers]
    searches += [s for s in extra.get("searches") or [] if s not in searches]
    for o in extra.get("options") or []:
        text = o["name"] + (f":{o['value']}" if o.get("value") else "")
        options = [x for x in options if x.split(":")[0] != o["name"]] + [text]
    return DNSConfig(servers=servers, searches=searches, options=options)


# The apiserver accepts quantities far beyond what a cgroup or CRI's int64 fields can hold
# ("9Ei" of memory, "1e15" CPUs). Such a limit means "unlimited" in practice: clamp instead of
# failing the CreateContainer call (protobuf raises ValueError on int64 overflow).
MAX_CPU_MILLI = 10**9  # a million CPUs: its CFS quota (1e11 us) is still under the kernel's cap
MAX_BYTES = 2**62


def container_resources(c: Mapping[str, Any]) -> Resources:
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    return Resources(
        cpu_request_milli=min(MAX_CPU_MILLI, cpu_milli(req.get("cpu", lim.get("cpu")))),
        cpu_limit_milli=min(MAX_CPU_MILLI, cpu_milli(lim.get("cpu"))),
        memory_request_bytes=min(MAX_BYTES, to_int(req.get("memory", lim.get("memory")))),
        memory_limit_bytes=min(MAX_BYTES, to_int(lim.get("memory"))),
    )


def pod_resources(spec: Mapping[str, Any]) -> Resources:
    """Effective pod resources: max(sum over app containers, largest init container)."""
    apps = [container_resources(c) for c in spec.get("containers") or []]
    inits = [container_resources(c) for c in spec.get("initContainers") or []]
    out = Resources()
    for field in dataclasses.fields(Resources):
        total = sum(getattr(r, field.name) for r in apps)
        setattr(out, field.name, max([total, *(getattr(r, field.name) for r in inits)]))
    return out


def _ports(c: Mapping[str, Any]) -> list[PortMapping]:
    return [
        PortMapping(
            container_port=p["containerPort"],
            protocol=p.get("protocol", "TCP"),
            host_port=p.get("hostPort", 0) or 0,
            host_ip=p.get("hostIP", ""),
        )
        for p in c.get("ports") or []
    ]


HOSTNAME_MAX = 63


def _truncate_hostname(hostname: str) -> str:
    """kubelet's truncatePodHostnameIfNeeded: at most 63 chars, never ending in '-' or '.'."""
    if len(hostname) <= HOSTNAME_MAX:
        return hostname
    return hostname[:HOSTNAME_MAX].rstrip("-.")


def pod_hostname_and_domain(pod: Mapping[str, Any], cluster_domain: str) -> tuple[str, str]:
    """kubelet's GeneratePodHostNameAndDomain: spec.hostnameOverride wins outright (no domain);
    else spec.hostname or the pod name, with ``<subdomain>.<ns>.svc.<cluster domain>`` when a
    subdomain is set. (The API server validates the names.)"""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    override = spec.get("hostnameOverride")
    if override:
        return _truncate_hostname(str(override)), ""
    hostname = _truncate_hostname(str(spec.get("hostname") or meta.get("name", "")))
    subdomain = spec.get("subdomain")
    if not subdomain:
        return hostname, ""
    return hostname, f"{subdomain}.{meta.get('namespace', 'default')}.svc.{cluster_domain}"


def kernel_hostname(pod: Mapping[str, Any], cluster_domain: str) -> str:
    """The sandbox's hostname (kubelet's GetNodenameForKernel): the FQDN when
    setHostnameAsFQDN is true and the pod has a domain, else the short name."""
    hostname, domain = pod_hostname_and_domain(pod, cluster_domain)
    if (pod.get("spec") or {}).get("setHostnameAsFQDN") and domain:
        return f"{hostname}.{domain}"
    return hostname


def has_privileged_container(spec: Mapping[str, Any], *, ephemeral: bool = True) -> bool:
    """kubelet's HasPrivilegedContainer: any init, app or (unless ``ephemeral`` is False)
    ephemeral container is privileged."""
    parts = (
        ("initContainers", "containers", "ephemeralContainers")
        if ephemeral
        else ("initContainers", "containers")
    )
    return any(
        bool((c.get("securityContext") or {}).get("privileged"))
        for part in parts
        for c in spec.get(part) or []
    )


def sandbox_spec(
    pod: Mapping[str, Any], workload_key: str, cluster_dns: Sequence[str], cluster_domain: str
) -> PodSandboxSpec:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    sc = spec.get("securityContext") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return PodSandboxSpec(
        uid=meta.get("uid", ""),
        namespace=meta.get("namespace", "default"),
        name=meta.get("name", ""),
        workload_key=workload_key,
        hostname=kernel_hostname(pod, cluster_domain),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        dns=dns_config(pod, cluster_dns, cluster_domain),
        ports=[p for c in containers for p in _ports(c)],
        runtime_class=spec.get("runtimeClassName") or "",
        security=PodSecurity(
            run_as_user=sc.get("runAsUser"),
            run_as_group=sc.get("runAsGroup"),
            run_as_non_root=bool(sc.get("runAsNonRoot")),
            fs_group=sc.get("fsGroup"),
            supplemental_groups=list(sc.get("supplementalGroups") or []),
            sysctls={s["name"]: s["value"] for s in sc.get("sysctls") or []},
            privileged=has_privileged_container(spec),
        ),
        resources=pod_resources(spec),
        images=list(dict.fromkeys(c.get("image", "") for c in containers if c.get("image"))),
    )


def pull_policy(c: Mapping[str, Any]) -> PullPolicy:
    """The apiserver defaults imagePullPolicy; recompute the same default if it is absent."""
    value = c.get("imagePullPolicy")
    if value:
        return PullPolicy(value)
    image = c.get("image", "")
    tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
    return PullPolicy.IF_NOT_PRESENT if tagged and not image.endswith(":latest") else PullPolicy.ALWAYS


def container_spec(
    c: Mapping[str, Any],
    pod: Mapping[str, Any],
    env: Sequence[EnvVar],
    mounts: Sequence[Mount],
    is_init: bool,
    *,
    is_ephemeral: bool = False,
    target_container_id: str = "",
) -> ContainerSpec:
    psc = (pod.get("spec") or {}).get("securityContext") or {}
    sc = c.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    values = {e.name: e.value for e in env}
    return ContainerSpec(
        name=c["name"],
        image=c.get("image", ""),
        pull_policy=pull_policy(c),
        command=[expand(x, values) for x in c.get("command") or []],
        args=[expand(x, values) for x in c.get("args") or []],
        env=list(env),
        working_dir=c.get("workingDir", ""),
        mounts=list(mounts),
        ports=_ports(c),
        resources=container_resources(c),
        security=ContainerSecurity(
            run_as_user=sc.get("runAsUser", psc.get("runAsUser")),
            run_as_group=sc.get("runAsGroup", psc.get("runAsGroup")),
            run_as_non_root=bool(sc.get("runAsNonRoot", psc.get("runAsNonRoot"))),
            privileged=bool(sc.get("privileged")),
            read_only_root_fs=bool(sc.get("readOnlyRootFilesystem")),
            allow_privilege_escalation=sc.get("allowPrivilegeEscalation"),
            capabilities_add=list(caps.get("add") or []),
            capabilities_drop=list(caps.get("drop") or []),
        ),
        tty=bool(c.get("tty")),
        stdin=bool(c.get("stdin")),
        stdin_once=bool(c.get("stdinOnce")),
        termination_message_path=c.get("terminationMessagePath") or "/dev/termination-log",
        termination_message_policy=c.get("terminationMessagePolicy") or "File",
        is_init=is_init,
        is_ephemeral=is_ephemeral,
        target_container_id=target_container_id,
    )


def expand(text: str, values: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, the rest is kept."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    if name in values:
                        out.append(values[name])
                    else:
                        out.append(text[i : end + 1])
                    i = end + 1
                    continue
        out.append(ch)
        i += 1
    return "".join(out)
