"""Punctual CronJobs against the bed's real kube-controller-manager (CronJob and Job controllers).

One instant for every case, in parallel (CronJob schedules are minute-granular): warmlet's
PunctualController runs in-process with exactly the rights of kind-config/rbac.yaml +
kind-config/punctual-rbac.yaml. No node honours the hold here (no node is labelled
warmlet.io/holds-start), so held pods stay Pending: the CronJob side is tested on its own.

- plain: the held Job exists ~lead before the instant with the controller's exact name, labels,
  annotations and ownerReference (compared field by field with the Job the controller itself
  creates at the same instant for an identical CronJob that did not opt in); at the instant
  the controller creates no second Job, status.active/lastScheduleTime are right, and no
  UnexpectedJob (nor SuccessfulCreate) is recorded on it;
- history: activeDeadlineSeconds counts from the instant (the held Job fails after it, not during
  the lead) and failedJobsHistoryLimit 0 then removes it (the controller's history limits);
- suspend / resched / template / gone: suspend set, schedule changed, template changed, CronJob
  deleted during the lead;
- forbid / replace: a long previous run in status.active: Forbid pre-creates nothing (and the
  controller says JobAlreadyActive at the instant); Replace deletes the previous run at the instant;
- manual: ``kubectl create job --from=cronjob/...`` during the lead still works beside the held Job.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import pytest
from test_incluster_rbac import RBAC, ROOT, mint_sa_kubeconfig  # the README's host-mode identity

from provider.config import PunctualConfig
from provider.events import EventRecorder
from provider.kubeclient import ApiError, KubeClient
from provider.punctual.controller import PunctualController
from testbed.bed import TestBed
from testbed.testing import BatchView, create_namespace, node_config, running_node, wait_for
from testbed.wait import WaitTimeout

pytestmark = pytest.mark.integration
JSON = dict[str, Any]
PUNCTUAL_RBAC = ROOT / "kind-config" / "punctual-rbac.yaml"
LEAD = 40.0
NODE_LABELS = {"kubernetes.io/hostname": "punctual-test-node", "type": "virtual-kubelet"}


def template(**job_spec: Any) -> JSON:
    return {
        "metadata": {"labels": {"team": "night", "app": "report"}, "annotations": {"owner": "ops"}},
        "spec": {
            "backoffLimit": 0,
            **job_spec,
            "template": {
                "metadata": {"labels": {"app": "report"}},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"type": "virtual-kubelet"},
                    "tolerations": [{"key": "virtual-kubelet.io/provider", "operator": "Exists"}],
                    "containers": [{"name": "app", "image": "busybox"}],
                },
            },
        },
    }


def cronjob(
    name: str, opted: bool = True, schedule: str = "* * * * *", lead: float | None = None, **spec: Any
) -> JSON:
    ann = {"warmlet.io/punctual": "true"} if opted else {}
    if lead is not None:
        ann["warmlet.io/punctual-lead-seconds"] = str(lead)
    job_spec = spec.pop("job_spec", {})
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "annotations": ann},
        "spec": {"schedule": schedule, "jobTemplate": template(**job_spec), **spec},
    }


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.time()))


class Api(BatchView):
    async def fake_previous_run(self, cj_name: str, instant: float) -> JSON:
        """A long run of an earlier instant in the CronJob's status.active (as the controller
        leaves it): a controlled Job whose pods cannot be scheduled."""
        cj = await self.cj(cj_name)
        body = copy.deepcopy(cj["spec"]["jobTemplate"])
        body["spec"]["template"]["spec"]["nodeSelector"] = {"no-such-node": "true"}
        minute = int(instant // 60)
        body.update(apiVersion="batch/v1", kind="Job")
        body["metadata"] = {
            "name": f"{cj_name}-{minute}",
            "annotations": {"batch.kubernetes.io/cronjob-scheduled-timestamp": rfc(instant)},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "CronJob", "name": cj_name, "uid": cj["metadata"]["uid"]}
            ],
        }
        job = await self.c.post(self.job_path(), body)
        for _ in range(10):
            cj = await self.cj(cj_name)
            ref = {
                "kind": "Job",
                "namespace": self.ns,
                "name": job["metadata"]["name"],
                "uid": job["metadata"]["uid"],
            }
            cj["status"] = {"active": [{**ref, "apiVersion": "batch/v1"}], "lastScheduleTime": rfc(instant)}
            try:
                await self.c.put(self.cj_path(cj_name) + "/status", cj)
                break
            except ApiError as e:
                if not e.conflict:
                    raise
        refs = [{**job["metadata"]["ownerReferences"][0], "controller": True, "blockOwnerDeletion": True}]
        return await self.c.patch(
            self.job_path(job["metadata"]["name"]), {"metadata": {"ownerReferences": refs}}
        )

    async def events(self) -> list[JSON]:
        items: list[JSON] = (await self.c.list_all(f"/api/v1/namespaces/{self.ns}/events"))["items"]
        return items


def rfc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def failed(job: JSON | None) -> bool:
    conds = ((job or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Failed" and c.get("status") == "True" for c in conds)


def active_uids(cj: JSON) -> list[str]:
    return [r["uid"] for r in (cj.get("status") or {}).get("active") or []]


def without_warmlet(d: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in d.items() if not k.startswith("warmlet.io/")}


@contextlib.asynccontextmanager
async def punctual_controller(sa_kubeconfig: Path, errors: list[tuple[str, int | str]]) -> Any:
    client = await KubeClient.from_kubeconfig(
        str(sa_kubeconfig), on_error=lambda verb, code: errors.append((verb, code)), max_connections=16
    )
    recorder = EventRecorder(client, "punctual-test-node")
    cfg = PunctualConfig(enabled=True, lead_seconds=LEAD)
    ctl = PunctualController(cfg, client, recorder, NODE_LABELS, [])
    tasks = [asyncio.create_task(ctl.run()), asyncio.create_task(recorder.run())]
    try:
        yield ctl
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


async def test_punctual_cronjobs_against_the_real_controller(
    testbed: TestBed, kubeconfig: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="provider.punctual")  # shown if it fails
    testbed.kubectl("apply", "--server-side", "--field-manager=warmlet-rbac-test", "-f", str(RBAC))
    testbed.kubectl("apply", "--server-side", "--field-manager=warmlet-rbac-test", "-f", str(PUNCTUAL_RBAC))
    sa_kubeconfig = mint_sa_kubeconfig(testbed, kubeconfig, tmp_path / "sa")
    admin = await KubeClient.from_kubeconfig(str(kubeconfig))
    errors: list[tuple[str, int | str]] = []
    try:
        ns = await create_namespace(admin, "punctual")
        api = Api(admin, ns)
        # the instant: far enough for the lead, and every CronJob created within the minute before
        # it (so the first instant after their creation is T, and none fired natively before)
        T = float(math.ceil((time.time() + LEAD + 8) / 60) * 60)
        await sleep_until(T - 58)
        minute = int(T // 60)
        cases = {
            "plain": cronjob("plain", successfulJobsHistoryLimit=1),
            "native": cronjob("native", opted=False, successfulJobsHistoryLimit=1),
            "history": cronjob("history", failedJobsHistoryLimit=0, job_spec={"activeDeadlineSeconds": 3}),
            "suspend": cronjob("suspend"),
            "resched": cronjob("resched", lead=100),
            "template": cronjob("template"),
            "gone": cronjob("gone"),
            "forbid": cronjob("forbid", concurrencyPolicy="Forbid"),
            "replace": cronjob("replace", concurrencyPolicy="Replace"),
            "manual": cronjob("manual"),
        }
        for body in cases.values():
            await admin.post(api.cj_path(), body)
        prev_forbid = await api.fake_previous_run("forbid", T - 60)
        prev_replace = await api.fake_previous_run("replace", T - 60)
        assert time.time() < T - LEAD - 1, "setup took too long for the lead"

        async with punctual_controller(sa_kubeconfig, errors):
            # ---------------------------------------------------------------- the lead
            expected = ("plain", "history", "suspend", "resched", "template", "gone", "replace", "manual")

            async def all_held() -> bool:
                return all([await api.job(f"{n}-{minute}") is not None for n in expected])

            # the controller starts (caches synced) and pre-creates within a few seconds of the
            # lead's start; a loaded machine gets up to 14 s (the edits below still fit the lead)
            with contextlib.suppress(WaitTimeout):
                await wait_for(all_held, max(1.0, T - LEAD + 14 - time.time()), 0.5, "held Jobs")
            held = {name: await api.job(f"{name}-{minute}") for name in cases}
            for name in expected:
                assert held[name] is not None, f"{name}: no held Job {LEAD - 14:.0f}s before the instant"
            assert held["native"] is None and held["forbid"] is None  # not opted in / Forbid + a run active
            plain = held["plain"]
            assert plain is not None
            plain_cj = await api.cj("plain")
            meta = plain["metadata"]
            assert meta["labels"] == {"team": "night", "app": "report"}
            assert meta["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"] == rfc(T)
            assert meta["annotations"]["owner"] == "ops"
            assert meta["annotations"]["warmlet.io/punctual-precreated"] == "true"
            assert meta["ownerReferences"] == [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": "plain",
                    "uid": plain_cj["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]
            pod_tmpl = plain["spec"]["template"]
            assert pod_tmpl["metadata"]["annotations"]["warmlet.io/start-at"] == rfc(T).replace("Z", ".000Z")
            terms = pod_tmpl["spec"]["affinity"]["nodeAffinity"][
                "requiredDuringSchedulingIgnoredDuringExecution"
            ]
            assert terms == {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "warmlet.io/holds-start", "operator": "In", "values": ["true"]}
                        ]
                    }
                ]
            }
            assert active_uids(plain_cj) == [meta["uid"]]  # adopted during the lead...
            assert (plain_cj.get("status") or {}).get("lastScheduleTime") != rfc(T)  # ...not yet run

            # kubectl create job --from=cronjob still works beside the held Job
            out = await asyncio.to_thread(
                testbed.kubectl, "-n", ns, "create", "job", "manual-by-hand", "--from=cronjob/manual"
            )
            assert "created" in out

            # edits during the lead
            template_uid = held["template"]["metadata"]["uid"]  # type: ignore[index]
            await api.edit("suspend", lambda cj: cj["spec"].__setitem__("suspend", True))
            next_minute = (time.gmtime(T + 60).tm_min, time.gmtime(T + 60).tm_hour)
            await api.edit(
                "resched", lambda cj: cj["spec"].__setitem__("schedule", f"{next_minute[0]} * * * *")
            )
            await api.edit(
                "template",
                lambda cj: cj["spec"]["jobTemplate"]["metadata"]["labels"].__setitem__("team", "day"),
            )
            await admin.delete(api.cj_path("gone"), {"propagationPolicy": "Background"})

            async def edits_pending() -> list[str]:
                tmpl = await api.job(f"template-{minute}")
                checks = {
                    "suspend taken back": await api.job(f"suspend-{minute}") is None,
                    "resched taken back": await api.job(f"resched-{minute}") is None,
                    "resched held for its new instant": await api.job(f"resched-{minute + 1}") is not None,
                    "template replaced": tmpl is not None
                    and tmpl["metadata"]["uid"] != template_uid
                    and tmpl["metadata"]["labels"]["team"] == "day",
                    "gone deleted": await api.job(f"gone-{minute}") is None,
                }
                return [k for k, ok in checks.items() if not ok]

            pending: list[str] = []

            async def edits_done() -> bool:
                pending[:] = await edits_pending()
                return not pending

            try:
                await wait_for(edits_done, 20, 0.5, "edits handled during the lead")
            except WaitTimeout as e:
                raise AssertionError(f"not handled during the lead: {pending}") from e
            assert time.time() < T, "the lead was not long enough to see the edits handled"
            history = await api.job(f"history-{minute}")
            assert history is not None and not failed(history)  # its deadline counts from the instant

            # ---------------------------------------------------------------- the instant
            # (checked before T + 20, when the lead of the next instant starts for "* * * * *")
            # history: activeDeadlineSeconds 3 counts from the instant, not from the creation
            await sleep_until(T + 2)
            history = await api.job(f"history-{minute}")
            assert history is not None and not failed(history), "activeDeadlineSeconds counted from creation"
            # ... its run then fails (deadline) and failedJobsHistoryLimit 0 removes it
            await wait_for(
                lambda: _gone(api, f"history-{minute}"), 12, 0.5, "failedJobsHistoryLimit 0 applied"
            )
            history_cj = await api.cj("history")
            assert history_cj["status"]["lastScheduleTime"] == rfc(T)
            assert not active_uids(history_cj)
            await sleep_until(T + 8)

            # plain: no duplicate, status right, same Job as the controller's own
            plain_jobs = await api.jobs_of("plain")
            assert [j["metadata"]["name"] for j in plain_jobs] == [f"plain-{minute}"]
            assert plain_jobs[0]["metadata"]["uid"] == meta["uid"]
            plain_cj = await api.cj("plain")
            assert active_uids(plain_cj) == [meta["uid"]]
            assert plain_cj["status"]["lastScheduleTime"] == rfc(T)
            (native,) = await api.jobs_of("native")
            assert native["metadata"]["name"] == f"native-{minute}"
            nm, pm = native["metadata"], plain_jobs[0]["metadata"]
            assert nm["labels"] == pm["labels"]
            assert nm["annotations"] == without_warmlet(pm["annotations"])
            strip = [{k: v for k, v in r.items() if k not in ("name", "uid")} for r in nm["ownerReferences"]]
            assert strip == [
                {k: v for k, v in r.items() if k not in ("name", "uid")} for r in pm["ownerReferences"]
            ]
            for k in (
                "backoffLimit",
                "completions",
                "parallelism",
                "completionMode",
                "suspend",
                "podReplacementPolicy",
            ):
                assert native["spec"].get(k) == plain_jobs[0]["spec"].get(k), k

            # suspend / gone: nothing ran at the instant
            assert await api.jobs_of("suspend") == []
            assert (await api.cj("suspend")).get("status", {}).get("lastScheduleTime") is None
            assert await api.jobs_of("gone") == []
            # resched: T no longer in the schedule: no Job for it, the new instant's is held
            assert [j["metadata"]["name"] for j in await api.jobs_of("resched")] == [f"resched-{minute + 1}"]
            # template: the replacement is the one that was recorded
            (tmpl_job,) = await api.jobs_of("template")
            assert tmpl_job["metadata"]["labels"]["team"] == "day"
            assert active_uids(await api.cj("template")) == [tmpl_job["metadata"]["uid"]]
            # forbid: nothing pre-created, the controller skipped the instant itself
            assert [j["metadata"]["uid"] for j in await api.jobs_of("forbid")] == [
                prev_forbid["metadata"]["uid"]
            ]
            # replace: the previous run deleted at the instant, the held Job recorded
            replace_jobs = await api.jobs_of("replace")
            assert prev_replace["metadata"]["uid"] not in [j["metadata"]["uid"] for j in replace_jobs]
            assert [j["metadata"]["name"] for j in replace_jobs] == [f"replace-{minute}"]
            replace_cj = await api.cj("replace")
            assert active_uids(replace_cj) == [replace_jobs[0]["metadata"]["uid"]]
            assert replace_cj["status"]["lastScheduleTime"] == rfc(T)
            # manual: kubectl's Job left alone, the held one recorded
            assert {j["metadata"]["name"] for j in await api.jobs_of("manual")} == {
                "manual-by-hand",
                f"manual-{minute}",
            }
            assert (await api.cj("manual"))["status"]["lastScheduleTime"] == rfc(T)

            # events: no UnexpectedJob/MissingJob about any held Job, no SuccessfulCreate for them
            events = await api.events()
            by = [
                (e["involvedObject"]["name"], e["reason"], e.get("message", ""))
                for e in events
                if e["involvedObject"].get("kind") == "CronJob"
            ]
            held_names = {f"{n}-{minute}" for n in cases} | {f"resched-{minute + 1}"}
            # MissingJob (a Normal event) is not counted for "gone" and "history": there the Job
            # was deleted by the garbage collector or by the controller itself (its history
            # limit), and the controller's next sync can read its cached CronJob from before its
            # own status write while its Job cache already has the deletion. Native CronJobs do the
            # same: 8 of 40 runs of native CronJobs with failedJobsHistoryLimit 0 on this bed
            # (docs/design.md, "Punctual CronJobs"). Jobs warmlet takes back are deleted only a
            # settle time after they left status.active, so "resched" and the rest must have none.
            bad = [
                b
                for b in by
                if (b[1] == "UnexpectedJob" or (b[1] == "MissingJob" and b[0] not in ("gone", "history")))
                and any(h in b[2] for h in held_names)
            ]
            assert bad == [], bad
            created = {(n, m) for n, r, m in by if r == "SuccessfulCreate"}
            assert ("native", f"Created job native-{minute}") in created
            assert not [c for c in created if c[0] != "native"], created
            assert ("forbid", "JobAlreadyActive") in {(n, r) for n, r, _ in by}
            assert ("plain", "PunctualPrecreated") in {(n, r) for n, r, _ in by}
            assert ("history", "SuccessfulDelete") in {(n, r) for n, r, _ in by}  # the history limit
            job_reasons = {(e["involvedObject"]["name"], e["reason"]) for e in events}
            assert (f"history-{minute}", "DeadlineExceeded") in job_reasons
            assert time.time() < T + 20, "checks ran into the next instant's lead"
        assert [e for e in errors if e[1] == 403] == []  # the manifests' rights are enough
    finally:
        with contextlib.suppress(Exception):
            await admin.delete(f"/api/v1/namespaces/{ns}")
        await admin.close()


async def _gone(api: Api, name: str) -> bool:
    return await api.job(name) is None


async def test_a_warmlet_node_with_punctual_enabled_runs_the_controller(
    kubeconfig: Path, tmp_path: Path
) -> None:
    cfg = node_config(kubeconfig, tmp_path)
    cfg.punctual.enabled = True
    async with running_node(cfg) as node:
        ctl = node.punctual
        assert isinstance(ctl, PunctualController)
        await asyncio.wait_for(ctl.leading.wait(), 30)  # both watches synced, acting
        assert ctl.cronjobs.synced.is_set() and ctl.jobs.synced.is_set()
        assert ctl.lands_here(
            {
                "spec": {
                    "jobTemplate": {"spec": {"template": {"spec": template()["spec"]["template"]["spec"]}}}
                }
            }
        )
