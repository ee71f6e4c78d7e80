"""kubelet's prober metrics, on their own registry (served at ``/metrics/probes``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest

from provider.probes.spec import ProbeKind

REGISTRY = CollectorRegistry(auto_describe=True)

PROBE_TOTAL = Counter(
    "prober_probe",
    "Cumulative number of a liveness, readiness or startup probe for a container by result.",
    ["probe_type", "result", "container", "pod", "namespace", "pod_uid"],
    registry=REGISTRY,
)
PROBE_DURATION = Histogram(
    "prober_probe_duration_seconds",
    "Duration in seconds for a probe response.",
    ["probe_type", "container", "pod", "namespace"],
    registry=REGISTRY,
)

SUCCESSFUL, FAILED, UNKNOWN = "successful", "failed", "unknown"


def observe(
    kind: ProbeKind, result: str, container: str, pod: str, namespace: str, uid: str, seconds: float
) -> None:
    """One probe run (kubelet: the duration is observed for successful and unknown results)."""
    PROBE_TOTAL.labels(kind.label, result, container, pod, namespace, uid).inc()
    if result != FAILED:
        PROBE_DURATION.labels(kind.label, container, pod, namespace).observe(seconds)


def forget(kind: ProbeKind, container: str, pod: str, namespace: str, uid: str) -> None:
    """The probe's worker ended: drop its series (kubelet deletes them too)."""
    for result in (SUCCESSFUL, FAILED, UNKNOWN):
        try:
            PROBE_TOTAL.remove(kind.label, result, container, pod, namespace, uid)
        except KeyError:
            pass
    try:
        PROBE_DURATION.remove(kind.label, container, pod, namespace)
    except KeyError:
        pass


def render() -> bytes:
    return generate_latest(REGISTRY)
