"""Final container states and logs of finished pods, kept after their sandbox went back to the pool.

Like kubelet, the logs of a finished pod stay readable (``kubectl logs`` of a completed Job) until
the pod object is deleted, although its containers are removed right away so the sandbox can be
reused. The final states are saved with the pool's state (they survive a warmlet restart) until
the pod's terminal status is in the API.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import shutil
from typing import Any

from pydantic import TypeAdapter

from common import crilog
from sandbox.backend import ContainerRuntimeState, PodSandboxSpec
from sandbox.cri import host
from sandbox.pool import WarmPool

log = logging.getLogger("warmlet.cri")

STATES: TypeAdapter[list[ContainerRuntimeState]] = TypeAdapter(list[ContainerRuntimeState])


def restore_finished(uid: str, data: dict[str, Any]) -> tuple[PodSandboxSpec, list[ContainerRuntimeState]]:
    """A finished pod's spec and final states from what the pool saved (ValueError if unreadable)."""
    spec = PodSandboxSpec(
        uid=uid,
        namespace=str(data.get("namespace", "")),
        name=str(data.get("name", "")),
        workload_key=str(data.get("workload_key", "")),
        hostname=str(data.get("name", "")),
    )
    states = STATES.validate_python(data.get("states") or [])
    return spec, states


class FinishedPods:
    """pod uid -> (spec, final container states) of released finished pods (see module doc)."""

    def __init__(self, pool: WarmPool, log_dir: str) -> None:
        self.pool = pool
        self.log_dir = log_dir
        self._finished: dict[str, tuple[PodSandboxSpec, list[ContainerRuntimeState]]] = {}

    def states(self, pod_uid: str) -> list[ContainerRuntimeState] | None:
        """Copies of the kept final states, None if none are kept for the pod."""
        kept = self._finished.get(pod_uid)
        return [copy.copy(s) for s in kept[1]] if kept is not None else None

    def keep(self, spec: PodSandboxSpec, final: list[ContainerRuntimeState]) -> None:
        self._finished[spec.uid] = (spec, final)
        # persisted by the release's first save, BEFORE the scrub removes the containers
        self.pool.keep_finished(
            spec.uid,
            {
                "namespace": spec.namespace,
                "name": spec.name,
                "workload_key": spec.workload_key,
                "states": STATES.dump_python(final, mode="json"),
            },
        )

    def restore(self) -> None:
        """After the pool loaded its state file: the final states it kept (adoption)."""
        for uid in list(self.pool.finished):
            try:
                self._finished[uid] = restore_finished(uid, self.pool.finished_of(uid) or {})
            except ValueError as e:
                log.warning("adopt: unreadable final states pod_uid=%s error=%s", uid, e)
                self.pool.drop_finished(uid)

    def status_written(self, pod_uid: str) -> None:
        """The pod's terminal status is in the API: its final states need not survive a restart."""
        self.pool.drop_finished(pod_uid)

    def drop_all_but(self, live_pod_uids: set[str]) -> None:
        for uid in [u for u in self.pool.finished if u not in live_pod_uids]:
            self.pool.drop_finished(uid)
            self._finished.pop(uid, None)

    async def gone(self, pod_uid: str) -> None:
        """The pod object was deleted: drop its kept final states and remove its log directory."""
        kept = self._finished.pop(pod_uid, None)
        self.pool.drop_finished(pod_uid)
        if self.pool.get_by_pod(pod_uid) is not None:
            return  # still holds a sandbox: release_sandbox first
        if kept is not None:
            spec = kept[0]
            logdir = crilog.pod_log_dir(self.log_dir, spec.namespace, spec.name, spec.uid)
            await asyncio.to_thread(shutil.rmtree, logdir, True)
        else:  # e.g. adopted after a restart: find the directory by the uid suffix
            await asyncio.to_thread(host.remove_stale_log_dirs, self.log_dir, None, pod_uid)
