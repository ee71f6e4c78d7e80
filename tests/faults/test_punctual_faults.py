"""Punctual CronJobs under faults, on the real bed: kube-apiserver, kube-controller-manager (the
CronJob and Job controllers), kube-scheduler and warmlet's CRI backend on the bed's containerd.

tests/integration/test_punctual.py proves the CronJob side against the real controllers with no
node honouring the hold; tests/integration/test_pods_hold.py and tests/e2e/test_start_hold.py
the hold on a node (bare pods, a restart during the hold). Here the two meet and things break:

- ``test_sigkill_during_the_lead_and_the_start_wave`` (one instant): warmlet, the only punctual
  controller and the node of every pod, is SIGKILLed three times: as soon as the first held Job
  exists (its adoption cut short), right after the CronJobs are suspended / deleted / edited with
  their pods held on the node (the take-back cut short), and in the middle of the start wave of
  18 held pods (StartContainer one at a time). Each time it is restarted at once.
- ``test_apiserver_down_at_the_instant_and_forbid_with_a_long_run`` (two instants): kube-apiserver
  stopped from 4 s before the instant to 6 s after it (the held pods start on the node's clock;
  status and the CronJob catch up); Forbid with an earlier run that became active during the lead
  (the held Job is taken back without its pod ever starting; when that run ends, the next
  instant's held Job starts on time).

Every container prints a mark once; a watcher polls containerd every 0.2 s and records each
container's first start, so a start before the instant or of a container that must never run is
caught, not only the end state.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import E2E, wait_for
from fault_helpers import own_bed
from process_helpers import Warmlet, wait_ready
from punctual_helpers import (
    BAD_REASONS,
    JSON,
    MARK,
    Cron,
    StartWatch,
    cronjob,
    minute,
    next_instant,
    phase,
    precreated,
    rfc,
    sleep_until,
    started_at_annotation,
    started_count,
    waiting_reason,
)

from sandbox.cri.client import CriClient

WAVE = 16  # pods of the wave CronJob (+ lead and edit: 18 held pods start at the instant)
ON_TIME = 3.0  # the tolerance: a held pod started later than this after the instant is late


def marks(log_dir: Path, p: JSON) -> int:
    """How many times the pod's containers printed MARK, over every log file of every attempt."""
    meta = p["metadata"]
    d = log_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"
    return sum(f.read_text(errors="replace").count(MARK) for f in d.glob("*/*.log*"))


async def held_pods(cron: Cron, jobs: dict[str, int], watch: StartWatch) -> list[JSON] | None:
    """The pods of these Jobs (name: pod count) once every one is held with its container created."""
    pods = [p for name in jobs for p in await cron.pods_of_job(name)]
    if len(pods) != sum(jobs.values()) or not all(waiting_reason(p) == "StartHeld" for p in pods):
        return None
    uids = {p["metadata"]["uid"] for p in pods}
    return pods if {s.pod_uid for s in watch.of(uids)} == uids else None


def controller_uid(obj: JSON) -> str | None:
    return next((r["uid"] for r in obj["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


def bad_events(events: list[tuple[str, str, str]], gone: tuple[str, ...] = ()) -> list[tuple[str, str, str]]:
    """UnexpectedJob / MissingJob Warnings on the CronJobs. A CronJob deleted during the lead
    (``gone``) may get a MissingJob from the controller's two informers racing (its cached copy
    synced after the garbage collector deleted its active Job; a native Job does the same)."""
    return [e for e in events if e[1] in BAD_REASONS and not (e[1] == "MissingJob" and e[0] in gone)]


async def job_names(cron: Cron, cj: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in await cron.jobs_of(cj))


def kill(proc: Any) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


# --------------------------------------------------------------------------------------- SIGKILL

LEAD_A = 60.0


@pytest.mark.timeout(900)
@pytest.mark.reliability(
    fault="warmlet (punctual controller and node) SIGKILLed as its first held Job is created, "
    "right after CronJobs are suspended/deleted/edited during the lead, and mid start wave "
    f"(18 held CRI pods, {WAVE} of one Job); restarted each time. A second punctual warmlet down "
    "for the whole lead and instant of its CronJob",
    checked="exactly one Job per instant (the held one, same uid; none for the suspended/deleted "
    "CronJobs), no SuccessfulCreate/UnexpectedJob/MissingJob, lastScheduleTime = the instant; no "
    "container started before the instant, none of a taken-back Job ever started, every other "
    "container started exactly once (one container, attempt 0, one run mark, restartCount 0); "
    "the second node's CronJob fired by the controller itself, one Job, run once",
)
async def test_sigkill_during_the_lead_and_the_start_wave(
    e2e: E2E, warmlets: list[Warmlet], unique: str, reliability: Any
) -> None:
    node = f"pkill-{unique}"
    w = Warmlet(e2e, node, e2e.tmp / node, punctual={"enabled": True}, pods={"start_wave_concurrency": 1})
    warmlets.append(w)
    # a second punctual warmlet node, down for the whole lead and the instant of its CronJob
    down_node = f"pdown-{unique}"
    wd = Warmlet(e2e, down_node, e2e.tmp / down_node, punctual={"enabled": True})
    warmlets.append(wd)
    proc, down_proc = w.spawn(), wd.spawn()
    await asyncio.gather(wait_ready(e2e, node), wait_ready(e2e, down_node))
    kill(down_proc)

    async def down_not_ready() -> bool:
        conds = (await e2e.client.get(f"/api/v1/nodes/{down_node}")).get("status", {}).get("conditions")
        return not any(c["type"] == "Ready" and c["status"] == "True" for c in conds or [])

    # the node lifecycle controller's verdict (its grace period, 50 s): only then is it "down" for
    # every punctual controller; before, the other node pre-creates for it as for a live node
    await wait_for(down_not_ready, 120, 1.0, f"{down_node} NotReady/Unknown")
    ns = await e2e.namespace("pkill")
    cron = Cron(e2e.client, ns)
    watch = StartWatch(e2e, node)
    watch.start()
    try:
        T = next_instant(LEAD_A, 15)
        mt = minute(T)
        short = "sleep 3"
        cases = {
            "lead": cronjob("lead", node, e2e.busybox, [T], short, LEAD_A),
            "wave": cronjob(
                "wave",
                node,
                e2e.busybox,
                [T],
                short,
                LEAD_A,
                job_spec={"parallelism": WAVE, "completions": WAVE},
            ),
            "susp": cronjob("susp", node, e2e.busybox, [T], short, LEAD_A),
            "gone": cronjob("gone", node, e2e.busybox, [T], short, LEAD_A),
            "edit": cronjob("edit", node, e2e.busybox, [T], short, LEAD_A),
        }
        for body in cases.values():
            await cron.create(body)
        await cron.create(cronjob("down", down_node, e2e.busybox, [T], short, LEAD_A))
        held_names = {n: f"{n}-{mt}" for n in cases}
        assert time.time() < T - LEAD_A, "setup took too long for the lead"

        # kill 1: as soon as the first held Job exists (its adoption most likely not done yet)
        async def first_job() -> JSON | None:
            for n in cases:
                if (j := await cron.job(held_names[n])) is not None:
                    return j
            return None

        await sleep_until(T - LEAD_A - 1)
        j1 = await wait_for(first_job, 30, 0.05, "the first held Job")
        kill(proc)
        kill1_at = time.time() - T
        adopted_at_kill = any(r.get("controller") for r in j1["metadata"].get("ownerReferences") or [])
        proc = w.spawn("-2")

        # every pod held with its container created; then suspend / delete / edit, and kill 2
        pods_of = {n: (WAVE if n == "wave" else 1) for n in cases}
        held = await wait_for(
            lambda: held_pods(cron, {held_names[n]: c for n, c in pods_of.items()}, watch),
            max(5.0, T - 12 - time.time()),
            0.5,
            "every pod of the five held Jobs held, containers created",
        )
        held_at = time.time() - T
        jobs_before = {n: await cron.job(held_names[n]) for n in cases}
        uid_before = {n: j["metadata"]["uid"] for n, j in jobs_before.items() if j is not None}
        assert set(uid_before) == set(cases)
        assert all(precreated(j) for j in jobs_before.values() if j is not None)
        never_run = {
            p["metadata"]["uid"] for p in held if p["metadata"]["labels"]["cron"] in ("susp", "gone", "edit")
        }
        await cron.edit("susp", lambda cj: cj["spec"].__setitem__("suspend", True))
        await e2e.client.delete(cron.cj_path("gone"), {"propagationPolicy": "Background"})
        await cron.edit(
            "edit", lambda cj: cj["spec"]["jobTemplate"]["metadata"]["labels"].__setitem__("v", "2")
        )
        kill(proc)
        kill2_at = time.time() - T
        proc = w.spawn("-3")

        async def edits_handled() -> list[JSON] | None:
            edit = await cron.job(held_names["edit"])
            if (
                await cron.job(held_names["susp"]) is not None
                or await cron.job(held_names["gone"]) is not None
                or edit is None
                or edit["metadata"]["uid"] == uid_before["edit"]
            ):
                return None
            pods = await held_pods(cron, {held_names["edit"]: 1}, watch)
            # the pod of the re-created Job: the replaced Job's pod has its Job's name too and
            # stays listed until the garbage collector has deleted it
            if pods is None or controller_uid(pods[0]) != edit["metadata"]["uid"]:
                return None
            return pods

        (edit_pod,) = await wait_for(
            edits_handled, max(3.0, T - 2 - time.time()), 0.5, "suspend/delete/edit handled after the restart"
        )
        assert time.time() < T - 1, "the bed was too slow: the restart did not finish within the lead"
        assert not watch.started(p["metadata"]["uid"] for p in held), "a container started during the lead"

        # kill 3: in the middle of the start wave (StartContainer one at a time)
        wave_uids = {p["metadata"]["uid"] for p in held if p["metadata"]["labels"]["cron"] == "wave"}
        c = CriClient(e2e.cri_endpoint)
        try:
            await sleep_until(T - 0.5)
            n_at_kill = 0
            while time.time() < T + 30:
                n_at_kill = await started_count(c, node, wave_uids)
                if n_at_kill >= 3:
                    break
                await asyncio.sleep(0.02)
            kill(proc)
            kill3_at = time.time() - T
            n_after_kill = await started_count(c, node, wave_uids)
        finally:
            await c.close()
        assert 3 <= n_at_kill < WAVE, f"the kill missed the wave: {n_at_kill}/{WAVE} started"
        proc = w.spawn("-4")
        await sleep_until(T + 2)  # the controller fires "down" itself (its warmlet is down)
        wd.spawn("-2")

        # ----------------------------------------------------------------- after the instant
        final_jobs = [held_names[n] for n in ("lead", "wave", "edit")]

        async def all_done() -> list[JSON] | None:
            pods = [p for j in final_jobs for p in await cron.pods_of_job(j)]
            ok = len(pods) == WAVE + 2 and all(phase(p) == "Succeeded" for p in pods)
            return pods if ok else None

        final = await wait_for(all_done, 240, 1.0, "every pod of the instant Succeeded")

        async def down_done() -> list[JSON] | None:
            pods = await cron.pods_of_job(f"down-{mt}")
            return pods if len(pods) == 1 and phase(pods[0]) == "Succeeded" else None

        (down_pod,) = await wait_for(down_done, 180, 1.0, "the natively fired pod of 'down' Succeeded")
        await asyncio.sleep(1.0)  # a last watcher poll
    finally:
        await watch.stop()

    # Jobs: exactly the held ones, never re-created; nothing for the suspended / deleted CronJobs
    for n in ("lead", "wave"):
        jobs = await cron.jobs_of(n)
        assert [j["metadata"]["name"] for j in jobs] == [held_names[n]], n
        assert jobs[0]["metadata"]["uid"] == uid_before[n], f"{n}: the held Job was re-created"
    (edit_job,) = await cron.jobs_of("edit")
    assert edit_job["metadata"]["name"] == held_names["edit"] and precreated(edit_job)
    assert edit_job["metadata"]["labels"].get("v") == "2"
    assert await job_names(cron, "susp") == [] and await job_names(cron, "gone") == []
    for n in ("lead", "wave", "edit"):
        assert (await cron.cj(n))["status"].get("lastScheduleTime") == rfc(T), n
    assert (await cron.cj("susp")).get("status", {}).get("lastScheduleTime") is None
    events = await cron.cronjob_events()
    assert bad_events(events, gone=("gone",)) == []
    created = [e for e in events if e[1] == "SuccessfulCreate"]
    assert created == [("down", "SuccessfulCreate", f"Created job down-{mt}")], created
    assert any(e[:2] == ("down", "PunctualNotOnWarmlet") for e in events), events
    # down: warmlet down for the whole lead and the instant: fired the normal way, once
    (down_job,) = await cron.jobs_of("down")
    assert down_job["metadata"]["name"] == f"down-{mt}" and not precreated(down_job)
    assert (await cron.cj("down"))["status"].get("lastScheduleTime") == rfc(T)
    assert "warmlet.io/start-at" not in (down_pod["metadata"].get("annotations") or {})
    assert marks(wd.log_dir, down_pod) == 1

    # containers: none before the instant, none of a taken-back Job, every other one exactly once
    early = [s for s in watch.seen.values() if s.started_at and s.started_at < T]
    assert early == [], f"{len(early)} containers started before the instant"
    assert not watch.started(never_run), "a container of a suspended/deleted/replaced held Job ran"
    for p in final:
        uid, name = p["metadata"]["uid"], p["metadata"]["name"]
        seen = watch.of([uid])
        assert len(seen) == 1 and seen[0].attempt == 0, (name, seen)
        assert marks(w.log_dir, p) == 1, f"{name}: its container ran {marks(w.log_dir, p)} times"
        (cs,) = p["status"]["containerStatuses"]
        assert cs["restartCount"] == 0 and cs["state"]["terminated"]["exitCode"] == 0, (name, cs)
        at = started_at_annotation(p)
        assert at is not None and at >= T, (name, at)
    # the hold survived kills 1 and 2: the wave began on time (what was left at kill 3 began late)
    late = sorted((started_at_annotation(p) or 0.0) - T for p in final)
    assert late[0] <= ON_TIME, f"the first held pod started {late[0]:.3f} s after the instant"
    assert sum(x <= ON_TIME for x in late) >= n_at_kill, late
    assert edit_pod["metadata"]["uid"] in {p["metadata"]["uid"] for p in final}
    reliability.detail(
        f"kills at instant{kill1_at:+.1f} s (first held Job "
        f"{'adopted' if adopted_at_kill else 'not yet adopted'}), "
        f"{kill2_at:+.1f} s (20 pods held from {held_at:+.1f} s; right after suspend/delete/edit), "
        f"{kill3_at:+.2f} s ({n_at_kill}/{WAVE} of the wave started, {n_after_kill} once the kill landed)"
    )
    reliability.detail(
        f"3 Jobs for 3 remaining CronJobs, 0 duplicates, 0 early starts, 0 second starts; the 18 "
        f"held pods started {late[0]:.3f}..{late[-1]:.3f} s after the instant "
        f"({sum(x <= ON_TIME for x in late)} within {ON_TIME:.0f} s; the rest after the restart); the "
        "CronJob of the node down for the whole lead fired by the controller, 1 Job, run once"
    )


# ------------------------------------------------------------------------ apiserver down, Forbid

LEAD_B = 45.0
DOWN_BEFORE, UP_AFTER = 5.0, 6.0


@pytest.mark.timeout(900)
@pytest.mark.reliability(
    fault=f"kube-apiserver stopped {DOWN_BEFORE:.0f} s before the instant of 6 held CRI pods and started "
    f"{UP_AFTER:.0f} s after it; Forbid CronJob whose earlier run becomes active during the lead and "
    "outlasts the instant",
    checked="held pods started at the instant on the node's clock (containerd startedAt, never before, "
    f"within {ON_TIME:.0f} s), their status and the CronJob's catch up, one Job, no UnexpectedJob/"
    "MissingJob; Forbid: the held Job taken back without its pod ever starting, no Job for that "
    "instant, the next instant's held Job started on time",
)
async def test_apiserver_down_at_the_instant_and_forbid_with_a_long_run(e2e: E2E, reliability: Any) -> None:
    cp = own_bed(e2e).cp
    cfg = e2e.config()
    cfg.punctual.enabled = True
    node = cfg.node.name
    await e2e.start(cfg)
    ns = await e2e.namespace("pdown")
    cron = Cron(e2e.client, ns)
    watch = StartWatch(e2e, node)
    watch.start()
    try:
        T = next_instant(LEAD_B, 12)
        T2 = T + 60
        mt = minute(T)
        await cron.create(
            cronjob(
                "ontime",
                node,
                e2e.busybox,
                [T],
                "sleep 4",
                LEAD_B,
                job_spec={"parallelism": 6, "completions": 6},
            )
        )
        await cron.create(
            cronjob(
                "forbid",
                node,
                e2e.busybox,
                [T, T2],
                "sleep 2",
                LEAD_B,
                concurrencyPolicy="Forbid",
                startingDeadlineSeconds=10,  # no late run of the skipped instant
            )
        )
        assert time.time() < T - LEAD_B, "setup took too long for the lead"
        await sleep_until(T - LEAD_B)
        held = await wait_for(
            lambda: held_pods(cron, {f"ontime-{mt}": 6, f"forbid-{mt}": 1}, watch),
            max(5.0, T - 15 - time.time()),
            0.5,
            "ontime and forbid held",
        )
        ontime_job = await cron.job(f"ontime-{mt}")
        assert ontime_job is not None and precreated(ontime_job)
        forbid_uid = next(p["metadata"]["uid"] for p in held if p["metadata"]["labels"]["cron"] == "forbid")
        ontime_uids = {p["metadata"]["uid"] for p in held} - {forbid_uid}

        # an earlier run of forbid becomes active during the lead and outlasts the instant
        prev = await cron.add_running_previous_run("forbid", T - 60, f"sleep {T + 8 - time.time():.0f}")

        async def forbid_taken_back() -> bool:
            return await cron.job(f"forbid-{mt}") is None and not [
                p for p in await cron.pods_of_job(f"forbid-{mt}") if p["metadata"]["uid"] == forbid_uid
            ]

        await wait_for(
            forbid_taken_back,
            max(3.0, T - DOWN_BEFORE - 1 - time.time()),
            0.5,
            "forbid's held Job taken back",
        )

        # kube-apiserver down across the instant
        await sleep_until(T - DOWN_BEFORE)
        try:
            await asyncio.to_thread(cp.stop_apiserver, 1.0)  # TERM, KILL after 1 s
            stopped_at = time.time() - T
            await sleep_until(T + UP_AFTER)
            starts = watch.started(ontime_uids)  # from containerd alone: no API call meanwhile
        finally:
            await asyncio.to_thread(cp.start_apiserver)
        up_at = time.time() - T
        assert stopped_at < 0, f"the apiserver was stopped only {stopped_at:.1f} s after the instant"
        late = sorted(s.started_at - T for s in starts)
        assert len(late) == 6, f"{len(late)}/6 held containers started while the apiserver was down"
        assert late[0] >= 0, f"a container started {-late[0]:.3f} s before the instant"
        assert late[-1] <= ON_TIME, f"held containers started {late} s after the instant"

        # status catches up: the pods, the Job and the CronJob
        async def ontime_done() -> list[JSON] | None:
            pods = await cron.pods_of_job(f"ontime-{mt}")
            ok = len(pods) == 6 and all(phase(p) == "Succeeded" for p in pods)
            return pods if ok else None

        pods = await wait_for(ontime_done, 180, 1.0, "the held pods' status after the apiserver returned")
        caught_up = time.time() - T
        by_uid = {s.pod_uid: s for s in starts}
        for p in pods:
            at = started_at_annotation(p)
            assert at is not None and abs(at - by_uid[p["metadata"]["uid"]].started_at) < 0.002, p[
                "metadata"
            ]["name"]
            assert p["status"]["containerStatuses"][0]["restartCount"] == 0

        async def cronjob_caught_up() -> bool:
            st = (await cron.cj("ontime")).get("status") or {}
            return st.get("lastScheduleTime") == rfc(T) and st.get("lastSuccessfulTime") is not None

        await wait_for(cronjob_caught_up, 120, 1.0, "ontime's lastScheduleTime / lastSuccessfulTime")
        ontime_jobs = await cron.jobs_of("ontime")
        assert [j["metadata"]["uid"] for j in ontime_jobs] == [ontime_job["metadata"]["uid"]]

        # forbid: the earlier run ends, the next instant's held Job is pre-created and starts on time
        async def next_forbid_held() -> list[JSON] | None:
            return await held_pods(cron, {f"forbid-{mt + 1}": 1}, watch)

        (nxt,) = await wait_for(
            next_forbid_held, max(5.0, T2 - 3 - time.time()), 0.5, "forbid's next held Job"
        )

        async def next_forbid_done() -> JSON | None:
            p = await e2e.pod(ns, nxt["metadata"]["name"])
            return p if phase(p) == "Succeeded" else None

        nxt = await wait_for(next_forbid_done, 120, 1.0, "forbid's next run Succeeded")
        nxt_at = started_at_annotation(nxt)
        assert nxt_at is not None and T2 <= nxt_at <= T2 + ON_TIME, nxt_at
        await asyncio.sleep(0.5)
    finally:
        await watch.stop()
    forbid_jobs = await job_names(cron, "forbid")
    assert forbid_jobs == [prev["metadata"]["name"], f"forbid-{mt + 1}"], forbid_jobs
    assert not watch.started([forbid_uid]), "forbid's taken-back held pod ran"
    assert (await cron.cj("forbid"))["status"]["lastScheduleTime"] == rfc(T2)
    events = await cron.cronjob_events()
    assert bad_events(events) == []
    assert [e for e in events if e[1] == "SuccessfulCreate"] == [], "the controller created a Job itself"
    reliability.detail(
        f"apiserver down from instant{stopped_at:+.1f} s, restarted at +{UP_AFTER:.0f} s (ready, "
        f"controllers resynced at {up_at:+.1f} s): "
        f"6 held containers started "
        f"{late[0]:.3f}..{late[-1]:.3f} s after the instant; pods' status and the CronJob caught up "
        f"{caught_up:.0f} s after the instant; 1 Job"
    )
    reliability.detail(
        f"Forbid: held Job taken back when the earlier run became active, its pod never started, no Job "
        f"for that instant; next instant's held pod started {nxt_at - T2:.3f} s after it"
    )
