"""A container's probes as plain data, with Kubernetes' defaults (kubelet reads them from the API).

Defaults are the API server's: period 10 s, timeout 1 s, success and failure thresholds 1 and 3,
initial delay 0. A port given by NAME is resolved against the container's ports the way kubelet's
``probe.ResolveContainerPort`` does; a port that cannot be resolved is kept as ``error`` (kubelet:
the probe errors on every run, its result does not change).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ProbeKind(StrEnum):
    READINESS = "readiness"
    LIVENESS = "liveness"
    STARTUP = "startup"

    @property
    def label(self) -> str:
        """kubelet's probeType.String(): ``Readiness``, ``Liveness``, ``Startup``."""
        return self.value.capitalize()


SPEC_FIELDS = {
    ProbeKind.READINESS: "readinessProbe",
    ProbeKind.LIVENESS: "livenessProbe",
    ProbeKind.STARTUP: "startupProbe",
}


@dataclass(frozen=True)
class ExecAction:
    command: tuple[str, ...]


@dataclass(frozen=True)
class HTTPGetAction:
    scheme: str  # "http" or "https"
    host: str  # "" = the pod IP
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class TCPSocketAction:
    host: str  # "" = the pod IP
    port: int


@dataclass(frozen=True)
class GRPCAction:
    port: int
    service: str = ""


Handler = ExecAction | HTTPGetAction | TCPSocketAction | GRPCAction


@dataclass(frozen=True)
class ProbeSpec:
    kind: ProbeKind
    handler: Handler | None  # None: see ``error``
    initial_delay: int = 0
    period: int = 10
    timeout: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace: int | None = None  # probe-level terminationGracePeriodSeconds
    error: str = ""  # why the handler cannot run (unresolvable named port, no handler)


def _int(v: Any, default: int, minimum: int) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError):
        return default
    return n if n >= minimum else default


def resolve_port(port: Any, container: Mapping[str, Any]) -> int:
    """kubelet's ResolveContainerPort: a number, or the name of one of the container's ports."""
    if isinstance(port, int) and not isinstance(port, bool):
        n = port
    elif isinstance(port, str):
        found = [p.get("containerPort") for p in container.get("ports") or [] if p.get("name") == port]
        if not found:
            raise ValueError(f"couldn't find port: {port} in {container.get('name', '')}")
        n = int(found[0] or 0)
    else:
        raise ValueError(f"invalid port: {port!r}")
    if not 0 < n < 65536:
        raise ValueError(f"invalid port number: {n}")
    return n


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)|\$\$")


def expand_command(command: Sequence[str], env: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """kubelet's ExpandContainerCommandOnlyStatic: ``$(VAR)`` from the container's literal env
    values; an unknown reference stays as written, ``$$`` is a literal ``$``."""
    values = {e["name"]: e["value"] for e in env if "name" in e and isinstance(e.get("value"), str)}

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return values.get(m.group(1), m.group(0))

    return tuple(_VAR.sub(sub, str(a)) for a in command)


def _handler(probe: Mapping[str, Any], container: Mapping[str, Any]) -> Handler:
    if "exec" in probe:
        return ExecAction(
            expand_command((probe["exec"] or {}).get("command") or [], container.get("env") or [])
        )
    if "httpGet" in probe:
        h = probe["httpGet"] or {}
        headers = tuple((str(x.get("name", "")), str(x.get("value", ""))) for x in h.get("httpHeaders") or [])
        return HTTPGetAction(
            scheme=str(h.get("scheme") or "HTTP").lower(),
            host=str(h.get("host") or ""),
            port=resolve_port(h.get("port"), container),
            path=str(h.get("path") or ""),
            headers=headers,
        )
    if "tcpSocket" in probe:
        t = probe["tcpSocket"] or {}
        return TCPSocketAction(host=str(t.get("host") or ""), port=resolve_port(t.get("port"), container))
    if "grpc" in probe:
        g = probe["grpc"] or {}
        return GRPCAction(port=resolve_port(g.get("port"), container), service=str(g.get("service") or ""))
    raise ValueError(f"missing probe handler for {container.get('name', '')}")


def parse_probe(kind: ProbeKind, probe: Mapping[str, Any], container: Mapping[str, Any]) -> ProbeSpec:
    handler: Handler | None = None
    error = ""
    try:
        handler = _handler(probe, container)
    except ValueError as e:
        error = str(e)
    grace = probe.get("terminationGracePeriodSeconds")
    return ProbeSpec(
        kind=kind,
        handler=handler,
        initial_delay=_int(probe.get("initialDelaySeconds"), 0, 0),
        period=_int(probe.get("periodSeconds"), 10, 1),
        timeout=_int(probe.get("timeoutSeconds"), 1, 1),
        success_threshold=_int(probe.get("successThreshold"), 1, 1),
        failure_threshold=_int(probe.get("failureThreshold"), 3, 1),
        termination_grace=None if grace is None else _int(grace, 0, 0),
        error=error,
    )


def container_probes(container: Mapping[str, Any]) -> dict[ProbeKind, ProbeSpec]:
    """The probes a container declares, by kind."""
    return {
        kind: parse_probe(kind, container[field] or {}, container)
        for kind, field in SPEC_FIELDS.items()
        if container.get(field) is not None
    }


def probed_containers(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Containers that may have probes: app containers and sidecars (restartable init containers)."""
    spec = pod.get("spec") or {}
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return [*sidecars, *(spec.get("containers") or [])]
