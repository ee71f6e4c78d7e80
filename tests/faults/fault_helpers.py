"""Shared checks of the fault tests: runtime inventory (no duplicate, orphan or leaked container or
sandbox), pod lookups, metric deltas and a counter of warmlet's warning log lines."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from e2e_helpers import E2E, metric, wait_for

from proto import cri_pb2 as pb
from provider.app import WarmletNode
from sandbox.cri import mapping as m
from sandbox.cri.client import CriClient

JSON = dict[str, Any]
LOOP = "trap 'exit 0' TERM; echo up; while true; do sleep 1; done"


def own_bed(e2e: E2E) -> Any:
    """The session's private test bed, whose processes a fault test may stop and restart; a bed
    attached with WARMLET_TESTBED_REUSE=1 belongs to someone else: skip instead."""
    bed = e2e.testbed
    if not getattr(bed, "_owned", False) or not hasattr(bed, "cp"):
        pytest.skip("stops test-bed processes: needs the session's own bed (not WARMLET_TESTBED_REUSE=1)")
    return bed


def pod(name: str, spec: JSON, **meta: Any) -> JSON:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **meta}, "spec": spec}


def cstatus(p: JSON, name: str = "main") -> JSON:
    for cs in (p.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == name:
            return dict(cs)
    return {}


def phase(p: JSON) -> str:
    return str((p.get("status") or {}).get("phase", ""))


async def post_pods(e2e: E2E, ns: str, pods: Iterable[JSON], parallel: int = 8) -> None:
    sem = asyncio.Semaphore(parallel)

    async def one(p: JSON) -> None:
        async with sem:
            await e2e.client.post(f"/api/v1/namespaces/{ns}/pods", p)

    await asyncio.gather(*(one(p) for p in pods))


async def wait_phases(e2e: E2E, ns: str, want: dict[str, str], within: float, what: str) -> dict[str, JSON]:
    """Until every named pod is in its wanted phase; returns the pods by name (on timeout the
    error lists each pod's phase and container state)."""
    seen: dict[str, str] = {}

    async def check() -> dict[str, JSON] | None:
        pods = {p["metadata"]["name"]: p for p in await e2e.pods(ns)}
        seen.clear()
        for n in want:
            p = pods.get(n)
            seen[n] = "missing" if p is None else f"{phase(p)} {cstatus(p).get('state')}"[:200]
        ok = all(n in pods and phase(pods[n]) == ph for n, ph in want.items())
        return pods if ok else None

    try:
        return await wait_for(check, within, 1.0, what)
    except TimeoutError:
        wrong = {n: s for n, s in seen.items() if not s.startswith(want[n] + " ")}
        pods = {p["metadata"]["name"]: p for p in await e2e.pods(ns)}
        runtime = {n: await _runtime_view(e2e, pods[n]["metadata"]["uid"]) for n in wrong if n in pods}
        raise AssertionError(
            f"timed out after {within:.0f} s waiting for {what}: {wrong}; in the runtime: {runtime}"
        ) from None


async def _runtime_view(e2e: E2E, pod_uid: str) -> list[str]:
    """What containerd says about a pod's containers (state, attempt, reason, message)."""
    c = CriClient(e2e.cri_endpoint)
    try:
        out = []
        for ct in await c.list_containers(labels={m.LABEL_POD_UID: pod_uid}):
            st = (await c.container_status(ct.id)).status
            out.append(
                f"{ct.id[:12]} {ct.metadata.name}#{ct.metadata.attempt} state={st.state} "
                f"reason={st.reason!r} message={st.message[:200]!r} exit={st.exit_code}"
            )
        return out
    except Exception as e:  # a diagnostic: never hide the timeout behind it
        return [f"unreadable: {e}"]
    finally:
        await c.close()


async def ready_status(e2e: E2E, node: str) -> str:
    try:
        return str((await e2e.ready_condition(node)).get("status", ""))
    except Exception:
        return ""


async def lease_renew_time(e2e: E2E, node: str) -> str:
    lease = await e2e.client.get(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")
    return str(lease["spec"].get("renewTime", ""))


@dataclass
class Inventory:
    """What the runtime holds for one warmlet instance, checked against the pods and the pool."""

    containers: list[Any]
    sandboxes: list[Any]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def inventory(e2e: E2E, node: WarmletNode, pods: list[JSON]) -> Inventory:
    """Count containers and sandboxes of the node in containerd and list what is wrong.

    Wrong: a sandbox warmlet does not track (orphan), a container of no live pod (leak), a pod
    with more than one sandbox, or two containers of one pod with the same name and attempt
    (duplicate), or a running pod without a running container.
    """
    inst = node.cfg.node.name
    c = CriClient(e2e.cri_endpoint)
    try:
        conts = list(await c.list_containers(labels=m.managed_selector(inst)))
        boxes = list(await c.list_pod_sandbox(labels=m.managed_selector(inst)))
    finally:
        await c.close()
    inv = Inventory(conts, boxes)
    records = getattr(node.backend, "pool").records  # noqa: B009 - CRI backend only
    live = {p["metadata"]["uid"]: p for p in pods}
    for sb in boxes:
        if sb.id not in records:
            inv.problems.append(f"orphan sandbox {sb.id[:12]} ({sb.metadata.name})")
        elif sb.state != pb.SANDBOX_READY:
            inv.problems.append(f"sandbox {sb.id[:12]} not ready")
    per_pod: dict[str, set[str]] = {}
    names: Counter[tuple[str, str, int]] = Counter()
    for ct in conts:
        uid = m.pod_uid_of(ct.labels)
        if uid not in live:
            inv.problems.append(f"container {ct.id[:12]} of no live pod ({uid})")
            continue
        per_pod.setdefault(uid, set()).add(ct.pod_sandbox_id)
        names[(uid, ct.metadata.name, ct.metadata.attempt)] += 1
    for uid, sbs in per_pod.items():
        if len(sbs) > 1:
            inv.problems.append(f"pod {live[uid]['metadata']['name']} has {len(sbs)} sandboxes")
    for (uid, name, attempt), n in names.items():
        if n > 1:
            inv.problems.append(f"pod {live[uid]['metadata']['name']} has {n}x {name}#{attempt}")
    for uid, p in live.items():
        if phase(p) == "Running" and not any(
            m.pod_uid_of(ct.labels) == uid and ct.state == pb.CONTAINER_RUNNING for ct in conts
        ):
            inv.problems.append(f"pod {p['metadata']['name']} Running without a running container")
    return inv


async def settled_inventory(e2e: E2E, node: WarmletNode, ns: str, within: float = 90) -> Inventory:
    """The inventory once it is clean (cleanup after a fault may take a few PLEG/resync rounds)."""
    last: list[Inventory] = []

    async def clean() -> Inventory | None:
        inv = await inventory(e2e, node, await e2e.pods(ns))
        last[:] = [inv]
        return inv if inv.ok else None

    try:
        return await wait_for(clean, within, 2.0, "a clean runtime inventory")
    except TimeoutError:
        raise AssertionError(f"runtime inventory not clean: {last[0].problems if last else '?'}") from None


def api_errors() -> float:
    """warmlet_api_errors_total over every verb and code (process-wide)."""
    from prometheus_client import REGISTRY

    total = 0.0
    for fam in REGISTRY.collect():
        if fam.name == "warmlet_api_errors":
            total += sum(s.value for s in fam.samples if s.name.endswith("_total"))
    return total


def relists(reason: str) -> float:
    return metric("warmlet_pod_informer_relists_total", reason=reason)


class LogCount(logging.Handler):
    """Counts WARNING+ records of warmlet's loggers while installed (a hot retry loop shows here)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.by_logger: Counter[str] = Counter()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in ("provider", "sandbox", "warmlet"):
            self.count += 1
            self.by_logger[record.name] += 1
            if len(self.messages) < 10_000:
                self.messages.append(record.getMessage())

    def __enter__(self) -> LogCount:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)


class Stopwatch:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return round(time.monotonic() - self.t0, 1)
