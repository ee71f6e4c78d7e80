"""What every part of the CRI backend shares: the client, whose objects it owns, where logs go,
what the runtime told about itself, the clock, and the pods to sync once the runtime is back."""

from __future__ import annotations

from dataclasses import dataclass, field

from common.clock import SYSTEM, Clock
from sandbox.cri.client import CriApi
from sandbox.cri.host import RuntimeInfo


@dataclass
class CriContext:
    client: CriApi
    runtime_endpoint: str  # as configured (the client may dial it through a relay)
    selector: dict[str, str]  # labels of everything this warmlet instance owns in the runtime
    instance: str
    log_dir: str
    clock: Clock = SYSTEM
    # Known once the runtime answered a verbose Status (start); empty until then.
    runtime: RuntimeInfo = field(default_factory=RuntimeInfo)
    # Pods a call failed for while the runtime was away: they sync as soon as it answers again.
    retry_on_recovery: set[str] = field(default_factory=set)
