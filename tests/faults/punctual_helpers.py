"""Helpers of the punctual fault tests: CronJobs that fire at chosen instants on one node, the API
views the checks need (Jobs of a CronJob, its events, status writes in the controller's order) and
a watcher of containerd that records every container start of a node (a start before the instant,
or of a container that must never run, is caught while it happens, not only at the end)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from e2e_helpers import E2E

from proto import cri_pb2 as pb
from provider.pods import hold
from sandbox.cri import mapping as m
from sandbox.cri.client import CriClient
from testbed.testing import BatchView

JSON = dict[str, Any]
MARK = "punctual-run"  # printed once by every container: two lines in its logs = two runs
BAD_REASONS = ("UnexpectedJob", "MissingJob")


def next_instant(lead: float, margin: float) -> float:
    """The first minute boundary at least ``lead + margin`` seconds away."""
    return float(math.ceil((time.time() + lead + margin) / 60) * 60)


def minute(t: float) -> int:
    return int(t // 60)


def rfc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def schedule_at(instants: Iterable[float]) -> str:
    """A UTC cron schedule that fires at each instant (and at no other time within the next hour:
    the minute and hour lists cross only at a time of the past or an hour later)."""
    ts = [time.gmtime(t) for t in instants]
    minutes = ",".join(str(x) for x in sorted({t.tm_min for t in ts}))
    hours = ",".join(str(x) for x in sorted({t.tm_hour for t in ts}))
    return f"{minutes} {hours} * * *"


def cronjob(
    name: str, node: str, image: str, instants: Iterable[float], command: str, lead: float, **spec: Any
) -> JSON:
    """An opted-in CronJob whose pods may only run on ``node``; every container prints MARK once."""
    job_spec = spec.pop("job_spec", {})
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": name,
            "annotations": {"warmlet.io/punctual": "true", "warmlet.io/punctual-lead-seconds": str(lead)},
        },
        "spec": {
            "schedule": schedule_at(instants),
            "timeZone": "Etc/UTC",
            "jobTemplate": {
                "metadata": {"labels": {"cron": name}},
                "spec": {
                    "backoffLimit": 0,
                    **job_spec,
                    "template": {
                        "metadata": {"labels": {"cron": name}},
                        "spec": {
                            "restartPolicy": "Never",
                            "nodeSelector": {"kubernetes.io/hostname": node},
                            "tolerations": [{"operator": "Exists"}],
                            "terminationGracePeriodSeconds": 1,
                            "automountServiceAccountToken": False,
                            "enableServiceLinks": False,
                            "containers": [
                                {
                                    "name": "main",
                                    "image": image,
                                    "command": ["sh", "-c", f"echo {MARK}; {command}"],
                                }
                            ],
                        },
                    },
                },
            },
            **spec,
        },
    }


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.time()))


class Cron(BatchView):
    """The API views of one namespace's CronJobs, Jobs, pods and events."""

    async def create(self, body: JSON) -> JSON:
        return await self.c.post(self.cj_path(), body)

    async def pods(self, selector: str = "") -> list[JSON]:
        params = {"labelSelector": selector} if selector else {}
        items: list[JSON] = (await self.c.list_all(f"/api/v1/namespaces/{self.ns}/pods", **params))["items"]
        return items

    async def pods_of_job(self, job_name: str) -> list[JSON]:
        return await self.pods(f"job-name={job_name}")

    async def cronjob_events(self) -> list[tuple[str, str, str]]:
        """(CronJob name, reason, message) of every event about a CronJob of the namespace."""
        items = (await self.c.list_all(f"/api/v1/namespaces/{self.ns}/events"))["items"]
        return [
            (e["involvedObject"]["name"], e["reason"], e.get("message", ""))
            for e in items
            if e["involvedObject"].get("kind") == "CronJob"
        ]

    async def add_running_previous_run(self, cj_name: str, instant: float, command: str) -> JSON:
        """A run of an earlier ``instant`` (as a late controller leaves it): a Job of the CronJob's
        template, no hold, added to ``status.active`` with ``lastScheduleTime`` = that instant, in
        the order that never shows the controller a half state (non-controller ownerReference,
        then status, then controller)."""
        cj = await self.cj(cj_name)
        body = copy.deepcopy(cj["spec"]["jobTemplate"])
        body["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", command]
        body.update(apiVersion="batch/v1", kind="Job")
        ref = {"apiVersion": "batch/v1", "kind": "CronJob", "name": cj_name, "uid": cj["metadata"]["uid"]}
        body["metadata"] = {
            "name": f"{cj_name}-{minute(instant)}",
            "labels": {"cron": cj_name},
            "annotations": {"batch.kubernetes.io/cronjob-scheduled-timestamp": rfc(instant)},
            "ownerReferences": [ref],
        }
        job = await self.c.post(self.job_path(), body)
        entry = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "namespace": self.ns,
            "name": job["metadata"]["name"],
            "uid": job["metadata"]["uid"],
        }

        def add(cur: JSON) -> None:
            st = cur.setdefault("status", {})
            st["active"] = [*(st.get("active") or []), entry]
            st["lastScheduleTime"] = rfc(instant)

        await self.edit(cj_name, add, "/status")
        refs = [{**ref, "controller": True, "blockOwnerDeletion": True}]
        return await self.c.patch(
            self.job_path(job["metadata"]["name"]), {"metadata": {"ownerReferences": refs}}
        )


def waiting_reason(p: JSON) -> str:
    cs = (p.get("status") or {}).get("containerStatuses") or []
    return str(((cs[0].get("state") or {}).get("waiting") or {}).get("reason", "")) if cs else ""


def phase(p: JSON) -> str:
    return str((p.get("status") or {}).get("phase") or "Pending")


def started_at_annotation(p: JSON) -> float | None:
    v = (p["metadata"].get("annotations") or {}).get(hold.STARTED_AT_ANNOTATION)
    return hold.parse_instant(v) if v else None


def precreated(job: JSON) -> bool:
    return (job["metadata"].get("annotations") or {}).get("warmlet.io/punctual-precreated") == "true"


@dataclass
class Seen:
    """One container as the watcher last saw it."""

    pod_uid: str
    attempt: int
    state: int
    started_at: float  # 0.0: never started


@dataclass
class StartWatch:
    """Polls containerd every ``interval`` for one warmlet instance and keeps every container it
    ever saw (also once removed), with the first start time containerd reports."""

    e2e: E2E
    instance: str
    interval: float = 0.2
    seen: dict[str, Seen] = field(default_factory=dict)
    polls: int = 0
    _task: asyncio.Task[None] | None = None

    async def poll(self, c: CriClient) -> None:
        for ct in await c.list_containers(labels=m.managed_selector(self.instance)):
            prev = self.seen.get(ct.id)
            if prev is not None and prev.started_at:
                prev.state = ct.state
                continue
            started = 0.0
            if ct.state != pb.CONTAINER_CREATED:
                with contextlib.suppress(Exception):  # removed meanwhile
                    started = (await c.container_status(ct.id)).status.started_at / 1e9
            self.seen[ct.id] = Seen(m.pod_uid_of(ct.labels), ct.metadata.attempt, ct.state, started)
        self.polls += 1

    async def _run(self) -> None:
        c = CriClient(self.e2e.cri_endpoint)
        try:
            while True:
                with contextlib.suppress(Exception):  # containerd busy: the next poll catches up
                    await self.poll(c)
                await asyncio.sleep(self.interval)
        finally:
            await c.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def of(self, pod_uids: Iterable[str]) -> list[Seen]:
        uids = set(pod_uids)
        return [s for s in self.seen.values() if s.pod_uid in uids]

    def started(self, pod_uids: Iterable[str]) -> list[Seen]:
        return [s for s in self.of(pod_uids) if s.started_at]


async def cri_containers(e2e: E2E, instance: str) -> dict[str, pb.ContainerStatus]:
    """ContainerStatus of every container of the instance in containerd, by container ID."""
    c = CriClient(e2e.cri_endpoint)
    try:
        out = {}
        for ct in await c.list_containers(labels=m.managed_selector(instance)):
            with contextlib.suppress(Exception):
                out[ct.id] = (await c.container_status(ct.id)).status
        return out
    finally:
        await c.close()


async def started_count(c: CriClient, instance: str, pod_uids: set[str]) -> int:
    """Containers of these pods containerd no longer has in CREATED (one cheap ListContainers)."""
    return sum(
        1
        for ct in await c.list_containers(labels=m.managed_selector(instance))
        if m.pod_uid_of(ct.labels) in pod_uids and ct.state != pb.CONTAINER_CREATED
    )
