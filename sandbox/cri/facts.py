"""Per-sandbox facts read from the runtime once: the pause process, the pod cgroup parent, and the
network counters at the moment the current pod got the sandbox (its stats start from there)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from proto import cri_pb2 as pb
from sandbox.cri import host
from sandbox.cri.client import CriApi, CriCallError


@dataclass
class SandboxRuntime:
    pause_pid: int = 0
    net_baseline: tuple[int, int] = (0, 0)
    cgroup_parent: str = ""


class SandboxFacts:
    """sandbox id -> :class:`SandboxRuntime`, read through the CRI client when first needed."""

    def __init__(self, client: CriApi) -> None:
        self.client = client
        self._sb: dict[str, SandboxRuntime] = {}

    def get(self, sandbox_id: str) -> SandboxRuntime | None:
        return self._sb.get(sandbox_id)

    def pop(self, sandbox_id: str) -> SandboxRuntime | None:
        return self._sb.pop(sandbox_id, None)

    async def read(self, sandbox_id: str) -> str:
        """Read pause pid + IP of a sandbox from the runtime (verbose status); return the IP."""
        st = await self.client.pod_sandbox_status(sandbox_id, verbose=True)
        facts = self._sb.setdefault(sandbox_id, SandboxRuntime())
        try:
            info = json.loads(st.info.get("info", "{}"))
            facts.pause_pid = int(info.get("pid") or 0)
        except (ValueError, TypeError):
            facts.pause_pid = 0
        return str(st.status.network.ip)

    async def known(self, sandbox_id: str) -> SandboxRuntime:
        """The sandbox's facts, read from the runtime if its pause pid is not known yet."""
        facts = self._sb.get(sandbox_id)
        if facts is None or not facts.pause_pid:
            await self.read(sandbox_id)
            facts = self._sb[sandbox_id]
        return facts

    async def ready(self, sandbox_id: str) -> bool:
        """Whether the runtime reports the sandbox READY (False when it no longer exists)."""
        try:
            st = await self.client.pod_sandbox_status(sandbox_id)
        except CriCallError as e:
            if e.not_found:
                return False
            raise
        return bool(st.status.state == pb.SANDBOX_READY)

    def net_counters(self, sandbox_id: str) -> tuple[int, int]:
        facts = self._sb.get(sandbox_id)
        return host.net_counters(facts.pause_pid) if facts is not None else (0, 0)

    def cgroup_parent(self, sandbox_id: str) -> str:
        facts = self._sb.get(sandbox_id)
        return facts.cgroup_parent if facts else ""

    def set_cgroup_parent(self, sandbox_id: str, parent: str) -> None:
        self._sb.setdefault(sandbox_id, SandboxRuntime()).cgroup_parent = parent
