"""Probe outcomes for backends that run no processes (``capabilities.runs_processes`` False).

Nothing listens in a simulated pod, so a network probe cannot be sent; its outcome comes from the
pod's annotations instead (a ``.<container>`` suffix overrides per container):

- ``warmlet.io/sim-probe-<kind>`` (kind: ``readiness``, ``liveness``, ``startup``):
  ``succeed`` (the default), ``fail``, ``succeed-after=<seconds>`` or ``fail-after=<seconds>``
  (seconds since the container started).

The annotation applies to every handler of that kind; without it an exec probe runs through the
backend's simulated ExecSync (``warmlet.io/sim-exec-exit-code``) and a network probe succeeds.
The kubelet state machine still applies (initial delay, period, thresholds).
"""

from __future__ import annotations

from collections.abc import Mapping

from provider.probes.outcome import Outcome, ProbeResult
from provider.probes.spec import ProbeKind

ANNOTATION_PREFIX = "warmlet.io/sim-probe-"
SIMULATED_FAILURE = "simulated probe failure"


def annotation_value(annotations: Mapping[str, str], kind: ProbeKind, container: str) -> str | None:
    key = ANNOTATION_PREFIX + kind.value
    value = annotations.get(f"{key}.{container}")
    return annotations.get(key) if value is None else value


def parse_rule(value: str) -> tuple[bool, float]:
    """(succeeds at first, seconds after which it flips); an unparsable value reads as ``succeed``."""
    v = value.strip().lower()
    if v == "fail":
        return False, float("inf")
    for prefix, first in (("succeed-after=", False), ("fail-after=", True)):
        if v.startswith(prefix):
            try:
                after = float(v[len(prefix) :])
            except ValueError:
                return True, float("inf")
            return first, max(0.0, after)
    return True, float("inf")


def simulated_outcome(
    annotations: Mapping[str, str], kind: ProbeKind, container: str, running_for: float
) -> Outcome | None:
    """The annotated outcome; None when the pod has no annotation for this probe."""
    value = annotation_value(annotations, kind, container)
    if value is None:
        return None
    first, after = parse_rule(value)
    ok = first if running_for < after else not first
    return Outcome(ProbeResult.SUCCESS) if ok else Outcome(ProbeResult.FAILURE, SIMULATED_FAILURE)
