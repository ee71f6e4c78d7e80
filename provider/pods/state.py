"""What the pod worker remembers about one pod between syncs, and small helpers its parts share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sandbox.backend import PodSandboxSpec, SandboxInfo

JSON = dict[str, Any]


@dataclass(slots=True)
class PodState:
    """What warmlet remembers about one pod between syncs (lost on restart, rebuilt by adoption).
    Slotted: one per pod, 10,000 on a busy simulated node (no per-instance ``__dict__``)."""

    sandbox: SandboxInfo | None = None
    spec: PodSandboxSpec | None = None
    pulled_any: bool = False
    released: bool = False
    annotated: bool = False  # the start annotations are in the API (retried until they are)
    annotations: dict[str, str] = field(default_factory=dict)  # the start annotations to write
    start_observed: bool = False  # the start counted in the metrics (once, even when retried)
    rejected: bool = False
    last_status: JSON | None = None
    image_errors: dict[str, tuple[str, float]] = field(default_factory=dict)  # key -> (error, when)
    # The terminal status computed when the pod finished: once its sandbox is released the pod
    # never runs again, even if a stale informer copy (not yet terminal) triggers another sync.
    final_status: JSON | None = None
    mount_event: str = ""
    checked_finished: bool = False  # looked for final states kept across a restart
    # the pod has ephemeral containers (kubectl debug): its sandbox is never handed to another pod
    debugged: bool = False
    # (container, waiting reason) of ephemeral containers already reported unable to run
    # (a frozenset, replaced when one is added: no empty set kept for each of 10,000 pods)
    ephemeral_warned: frozenset[tuple[str, str]] = frozenset()
    # The start hold (provider/pods/hold.py): over once the instant came or the pod ran (an
    # ordinary pod from then on); its app containers were created ahead and started by a wave;
    # the container the wave started last, whose postStart hook this pod's next sync runs.
    hold_over: bool = False
    precreated: bool = False
    post_start_due: str = ""


def earliest(a: float | None, b: float) -> float:
    """The sooner of two retry delays (None: no retry asked yet)."""
    return b if a is None else min(a, b)


def pod_name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"
