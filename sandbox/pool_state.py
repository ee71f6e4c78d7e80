"""What the warm pool knows of each sandbox, the driver it runs sandboxes with, and its state file.

CRI fixes a sandbox's metadata (name/namespace/uid) at RunPodSandbox, so after reuse the runtime
still shows the first pod. The truth about "which pod uses which sandbox" lives in the pool's
records, persisted here in a small JSON state file (and recoverable from container labels at
adoption), with the final container states of finished pods whose status may not be in the API yet.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import TypeAdapter

from sandbox.backend import PodSandboxSpec, SandboxInfo
from sandbox.pool_policy import DEFAULT_SANDBOX_COST_BYTES

log = logging.getLogger("warmlet.pool")

STATE_VERSION = 1
# a template's JSON in the state file (its pull credentials are never written)
TEMPLATE: TypeAdapter[PodSandboxSpec] = TypeAdapter(PodSandboxSpec)

SandboxState = Literal["idle", "in_use", "releasing", "creating"]


@dataclass
class SandboxRecord:
    """One sandbox warmlet owns (in use by a pod, or idle in its workload's pool)."""

    sandbox_id: str
    key: str
    namespace: str
    state: SandboxState
    pod_uid: str = ""  # current pod ('' while idle)
    pod_name: str = ""
    pod_ip: str = ""
    created_at: float = 0.0
    idle_since: float = 0.0
    from_pool: bool = False  # the current pod got it warm
    uses: int = 0  # how many pods have used it
    scratch_dirs: list[str] = field(default_factory=list)  # current pod's dirs to wipe on reuse
    cost_bytes: int = DEFAULT_SANDBOX_COST_BYTES  # what it counts against the memory cap
    single_use: bool = False  # its pod's workload key can never come again (PodSandboxSpec)

    def to_json(self) -> dict[str, Any]:
        # Same dict as dataclasses.asdict (flat fields + a list of str), without its deep copy:
        # saved on every acquire/release, over every record (hot in a burst).
        d = dict(self.__dict__)
        d["scratch_dirs"] = list(self.scratch_dirs)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SandboxRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def info(self) -> SandboxInfo:
        """The record as the seam shows it to the provider (its fields are already typed)."""
        return SandboxInfo(
            sandbox_id=self.sandbox_id,
            pod_uid=self.pod_uid,
            workload_key=self.key,
            pod_ip=self.pod_ip,
            from_pool=self.from_pool,
            created_at=self.created_at,
            namespace=self.namespace,
            name=self.pod_name,
        )


class SandboxDriver(Protocol):
    """Runtime operations the pool needs (implemented by the CRI and the simulated backends)."""

    async def create_sandbox(self, spec: PodSandboxSpec, prewarmed: bool) -> tuple[str, str]:
        """Run a new sandbox for ``spec``; return (sandbox_id, pod_ip)."""

    async def scrub_sandbox(self, record: SandboxRecord) -> bool:
        """Remove every container and leftover process, wipe scratch dirs; False if unusable."""

    async def destroy_sandbox(self, sandbox_id: str) -> None:
        """Stop and remove the sandbox and its containers (idempotent)."""

    async def sandbox_ready(self, sandbox_id: str) -> bool: ...

    async def ensure_images(self, spec: PodSandboxSpec) -> None:
        """Make the workload's images present (IfNotPresent)."""


class PoolStateFile:
    """The pool's JSON state file, written atomically (tmp + rename) on every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # workload key -> (template object, its JSON text): each template is encoded once
        self._template_json: dict[str, tuple[PodSandboxSpec, str]] = {}

    def save(
        self,
        records: list[SandboxRecord],
        templates: dict[str, PodSandboxSpec],
        finished: dict[str, str],
    ) -> None:
        """Write records (not the ones being created), templates and finished pods' final states."""
        sandboxes = [r.to_json() for r in records if r.state != "creating"]
        # The text of json.dumps({"version", "sandboxes", "templates"}), built from each template's
        # cached encoding: saved on every acquire/release, this was ~25 ms with 200 workloads.
        tpl = ", ".join(f"{json.dumps(k)}: {self._template_text(k, v)}" for k, v in templates.items())
        fin = ", ".join(f"{json.dumps(k)}: {v}" for k, v in finished.items())
        text = (
            f'{{"version": {json.dumps(STATE_VERSION)}, "sandboxes": {json.dumps(sandboxes)}, '
            f'"templates": {{{tpl}}}, "finished": {{{fin}}}}}'
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".pool-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _template_text(self, key: str, spec: PodSandboxSpec) -> str:
        """JSON of a template, encoded once per template object (templates are replaced, not mutated)."""
        cached = self._template_json.get(key)
        if cached is not None and cached[0] is spec:
            return cached[1]
        text = json.dumps(TEMPLATE.dump_python(spec, mode="json"))
        self._template_json[key] = (spec, text)
        return text

    def load(self) -> tuple[list[SandboxRecord], dict[str, PodSandboxSpec], dict[str, str]] | None:
        """Records, templates and finished pods (JSON texts); None if the file is missing or corrupt."""
        if not self.path.exists():
            return None
        try:
            data = json.loads(self.path.read_text())
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {data.get('version')}")
            recs = [SandboxRecord.from_json(d) for d in data.get("sandboxes", [])]
            tpls = {k: TEMPLATE.validate_python(v) for k, v in data.get("templates", {}).items()}
            finished = {str(k): json.dumps(v) for k, v in (data.get("finished") or {}).items()}
            return recs, tpls, finished
        except (OSError, ValueError, TypeError) as e:
            log.warning("pool state unreadable, adopting from labels only path=%s error=%s", self.path, e)
            return None
