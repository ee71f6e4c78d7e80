"""Differential test: the same pod specs on a real kubelet and on warmlet, statuses compared.

A real kubelet of the pinned release (``bench/kubelet_baseline.py``: own containerd, joined to
the test bed as its own Node) and a warmlet CRI node run side by side on one test bed. Every spec
of :data:`SPECS` (probes, lifecycle hooks, activeDeadlineSeconds, crash loop, failing init
containers, OOM, termination messages) is created, pinned by ``spec.nodeName``, on both nodes at
once, in one namespace per node. A watch records each pod's status sequence until the spec's
end condition holds (or its window passes); the sequences are normalised (timestamps, IDs and
IPs left out) and compared field by field (``bench/status_diff.py``), with the event reasons
each node recorded. The result, per spec, names the fields that differ and both value
sequences: ``bench/results/differential.json``. A difference is a fidelity gap of warmlet (or,
for a feature still being built on another branch, the expected gap), never a test failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import status_diff
from bench.common import write_result
from bench.harness import bed_session, delete_namespace, warmlet_node
from bench.kubelet_baseline import K8S_VERSION, KubeletUnavailable, kubelet_binary, no_binary, running_kubelet
from provider.kubeclient import ApiError, KubeClient
from provider.reflector import Reflector, by_name
from testbed.testing import create_namespace

log = logging.getLogger("bench.differential")
JSON = dict[str, Any]
SCENARIO = "differential"
HOLD = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
TERMINAL = ("Succeeded", "Failed")
EVENT_SETTLE_SECONDS = 3.0

Until = Callable[[status_diff.View], bool]


def terminal(v: status_diff.View) -> bool:
    return v.get("phase") in TERMINAL


def restarts(path: str, n: int) -> Until:
    """``path`` is ``containers.<name>`` or ``init.<name>``: restartCount reached ``n``."""
    return lambda v: int(v.get(f"{path}.restartCount") or 0) >= n


@dataclass(frozen=True)
class Spec:
    """One pod spec of the differential run: observed until ``until`` holds, at most ``window`` s
    (``until`` None: for the whole window, e.g. a pod that must STAY unready)."""

    name: str
    pod_spec: JSON
    window: float
    until: Until | None = None
    about: str = ""


def _c(name: str = "app", command: list[str] | None = None, **extra: Any) -> JSON:
    c: JSON = {"name": name, "image": "BUSYBOX", "imagePullPolicy": "IfNotPresent"}
    return {**c, "command": command or HOLD, **extra}


def _exec(*cmd: str) -> JSON:
    return {"exec": {"command": list(cmd)}}


def _spec(containers: list[JSON], policy: str = "Always", grace: int = 2, **extra: Any) -> JSON:
    return {
        "restartPolicy": policy,
        "terminationGracePeriodSeconds": grace,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": containers,
        **extra,
    }


SPECS: tuple[Spec, ...] = (
    Spec(
        "readiness-never",
        _spec([_c(readinessProbe={**_exec("false"), "periodSeconds": 1})]),
        window=12,
        about="a readiness probe that never succeeds: Running, never Ready",
    ),
    Spec(
        "liveness-failing",
        _spec([_c(livenessProbe={**_exec("false"), "periodSeconds": 1, "failureThreshold": 1})]),
        window=45,
        until=restarts("containers.app", 1),
        about="a liveness probe that always fails: killed and restarted",
    ),
    Spec(
        "poststart-hook",
        _spec(
            [
                _c(
                    lifecycle={"postStart": _exec("sh", "-c", "echo ok > /tmp/started")},
                    readinessProbe={**_exec("cat", "/tmp/started"), "periodSeconds": 1},
                )
            ]
        ),
        window=12,
        about="postStart writes a file the readiness probe reads: Ready only if the hook ran",
    ),
    Spec(
        "poststart-hook-fails",
        _spec([_c(lifecycle={"postStart": _exec("sh", "-c", "exit 1")})]),
        window=45,
        until=restarts("containers.app", 1),
        about="a failing postStart hook: FailedPostStartHook, container killed and restarted",
    ),
    Spec(
        "active-deadline",
        # 15 s: on this 2-core bed, with every spec starting at once, a real kubelet can take
        # over 5 s to report its first Running; with a shorter deadline it goes Pending -> Failed
        # and the comparison would measure that, not the deadline.
        _spec([_c(command=["sleep", "3600"])], policy="Never", activeDeadlineSeconds=15),
        window=50,
        until=terminal,
        about="activeDeadlineSeconds 15 on sleep 3600: unready at the deadline, then Failed/DeadlineExceeded",
    ),
    Spec(
        "crash-loop",
        _spec([_c(command=["sh", "-c", "echo crashing; exit 1"])]),
        window=60,
        until=restarts("containers.app", 2),
        about="exit 1 with restartPolicy Always: CrashLoopBackOff, restarts with back-off",
    ),
    Spec(
        "init-fails-never",
        _spec([_c()], policy="Never", initContainers=[_c("init", ["sh", "-c", "exit 1"])]),
        window=30,
        until=terminal,
        about="a failing init container, restartPolicy Never: pod Failed",
    ),
    Spec(
        "init-fails-onfailure",
        _spec([_c()], policy="OnFailure", initContainers=[_c("init", ["sh", "-c", "exit 1"])]),
        window=45,
        until=restarts("init.init", 1),
        about="a failing init container, restartPolicy OnFailure: init restarted with back-off",
    ),
    Spec(
        "oom",
        _spec(
            [
                _c(
                    command=["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                    resources={"limits": {"memory": "20Mi"}, "requests": {"memory": "20Mi"}},
                )
            ],
            policy="Never",
        ),
        window=40,
        until=terminal,
        about="dd with a 64 MiB buffer under a 20Mi limit: OOMKilled, exit 137",
    ),
    Spec(
        "fallback-to-logs",
        _spec(
            [
                _c(
                    command=["sh", "-c", "echo first line; sleep 0.3; echo last words >&2; exit 3"],
                    terminationMessagePolicy="FallbackToLogsOnError",
                )
            ],
            policy="Never",
        ),
        window=30,
        until=terminal,
        about="FallbackToLogsOnError, empty termination log, exit 3: message = log tail",
    ),
    Spec(
        "termination-file",
        _spec(
            [
                _c(
                    command=["sh", "-c", "printf 'by the app' > /dev/termination-log; echo log; exit 2"],
                    terminationMessagePolicy="FallbackToLogsOnError",
                )
            ],
            policy="Never",
        ),
        window=30,
        until=terminal,
        about="a termination-log file written: its content is the message (the file wins)",
    ),
)


# Pulls busybox into each node's runtime first: image pull events (the kubelet's containerd starts
# empty) are the test bed's state, not a behaviour to compare.
WARMUP = Spec("warmup", _spec([_c(command=["true"])], policy="Never"), window=120, until=terminal)


def pod_manifest(spec: Spec, node: str, busybox: str) -> JSON:
    body = dict(spec.pod_spec)
    for key in ("containers", "initContainers"):
        if key in body:
            body[key] = [{**c, "image": busybox} for c in body[key]]
    body["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": spec.name}, "spec": body}


@dataclass
class Recording:
    """The statuses one node reported for one pod, until its spec's end condition."""

    spec: Spec
    statuses: list[JSON] = field(default_factory=list)
    subs: dict[str, str] = field(default_factory=dict)  # the pod's UID and namespace -> placeholders
    done: asyncio.Event = field(default_factory=asyncio.Event)
    timed_out: bool = False
    seconds: float = 0.0

    def add(self, pod: JSON) -> None:
        status = pod.get("status") or {}
        if self.done.is_set() and status.get("phase") not in TERMINAL:
            return  # recorded until its end condition; a terminal pod's last updates still count
        meta = pod.get("metadata") or {}
        self.subs = {meta.get("uid", ""): "<uid>", meta.get("namespace", ""): "<namespace>"}
        self.statuses.append(status)
        if self.spec.until is not None and self.spec.until(status_diff.normalise(status)):
            self.done.set()


async def run_on_node(client: KubeClient, ns: str, node: str, busybox: str, specs: tuple[Spec, ...]) -> JSON:
    """Create every spec's pod on ``node``, record each status sequence, then fetch events."""
    recs = {s.name: Recording(s) for s in specs}

    def on_event(etype: str, obj: JSON) -> None:
        rec = recs.get((obj.get("metadata") or {}).get("name", ""))
        if rec is not None and etype != "DELETED":
            rec.add(obj)

    reflector = Reflector(client, f"/api/v1/namespaces/{ns}/pods", on_event, key=by_name, name=f"diff-{node}")
    watch = asyncio.create_task(reflector.run())
    try:

        async def one(rec: Recording) -> None:
            t0 = time.monotonic()
            await client.post(f"/api/v1/namespaces/{ns}/pods", pod_manifest(rec.spec, node, busybox))
            try:
                await asyncio.wait_for(rec.done.wait(), rec.spec.window)
            except TimeoutError:
                rec.timed_out = rec.spec.until is not None
                rec.done.set()
            rec.seconds = round(time.monotonic() - t0, 1)

        await asyncio.gather(*(one(r) for r in recs.values()))
        # Event recorders write asynchronously; a terminal pod's status still settles (kubelet
        # reports its sandbox gone, PodReadyToStartContainers=False, after its terminal phase).
        await asyncio.sleep(EVENT_SETTLE_SECONDS)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    events = (await client.list_all(f"/api/v1/namespaces/{ns}/events")).get("items") or []
    out: JSON = {}
    for name, rec in recs.items():
        mine = [e for e in events if (e.get("involvedObject") or {}).get("name") == name]
        out[name] = {
            "sequence": status_diff.sequence(rec.statuses, rec.subs),
            "events": [
                {"type": e.get("type"), "reason": e.get("reason"), "message": e.get("message")} for e in mine
            ],
            "timed_out": rec.timed_out,
            "seconds": rec.seconds,
        }
    return out


def diff_spec(spec: Spec, kubelet: JSON, warmlet: JSON) -> JSON:
    """One spec's comparison. Stored: the sequences of the fields that differ (not the whole
    status sequences, which would make the result thousands of lines), the accepted ones apart."""
    cmp = status_diff.compare(kubelet["sequence"], warmlet["sequence"])
    once = status_diff.compare(
        status_diff.from_first_start(kubelet["sequence"]), status_diff.from_first_start(warmlet["sequence"])
    )
    ok = status_diff.accepted(cmp["differs"], once["differs"])
    gaps = {f: d for f, d in cmp["differs"].items() if f not in ok}
    events = status_diff.compare_events(kubelet["events"], warmlet["events"])

    def node(run: JSON) -> JSON:
        return {
            "steps": len(run["sequence"]),
            "event_reasons": status_diff.event_reasons(run["events"]),
            "timed_out": run["timed_out"],
            "seconds": run["seconds"],
        }

    return {
        "about": spec.about,
        "same": not gaps and not events["only_kubelet"] and not events["only_warmlet"],
        # the fields whose value sequences differ, accepted differences left out
        "fields_differing": sorted(gaps),
        "differs": gaps,
        # differences explained by status_diff.ACCEPTED: field -> (the accepted name, both sequences)
        "accepted": {f: {"accepted": ok[f], **cmp["differs"][f]} for f in sorted(ok)},
        # the same, from the first status in which a container has run
        "fields_differing_once_started": sorted(once["differs"]),
        "final_differs": cmp["final_differs"],
        "events": events,
        "kubelet": node(kubelet),
        "warmlet": node(warmlet),
    }


def write_sequences(path: Path, kubelet: JSON, warmlet: JSON) -> None:
    """Both nodes' whole recordings (for reading a difference step by step; not committed)."""
    path.write_text(json.dumps({"kubelet": kubelet, "warmlet": warmlet}, indent=1) + "\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", action="append", default=[], help="run only this spec (repeatable)")
    parser.add_argument(
        "--sequences", default=None, help="also write both nodes' whole status sequences to this JSON file"
    )


def not_ran(reason: str) -> JSON:
    result: JSON = {"ran": False, "reason": reason, "kubelet_version": K8S_VERSION}
    write_result(SCENARIO, result)
    return {"scenario": SCENARIO, **result}


async def run(args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    specs = tuple(s for s in SPECS if not args.only or s.name in args.only)
    binary = kubelet_binary()
    if not binary.exists():
        return not_ran(no_binary(binary))
    try:
        async with bed_session(getattr(args, "kubeconfig", None)) as bed:
            busybox = bed.images.get("busybox", "busybox")
            async with running_kubelet(bed, binary) as knode, warmlet_node(bed, "cri") as wnode:
                client = await KubeClient.from_kubeconfig(bed.kubeconfig)
                namespaces: list[str] = []
                try:
                    kns = await create_namespace(client, "diff-kubelet")
                    namespaces.append(kns)
                    wns = await create_namespace(client, "diff-warmlet")
                    namespaces.append(wns)
                    await asyncio.gather(
                        run_on_node(client, kns, knode.name, busybox, (WARMUP,)),
                        run_on_node(client, wns, wnode.name, busybox, (WARMUP,)),
                    )
                    k, w = await asyncio.gather(
                        run_on_node(client, kns, knode.name, busybox, specs),
                        run_on_node(client, wns, wnode.name, busybox, specs),
                    )
                finally:
                    for ns in namespaces:
                        with contextlib.suppress(ApiError):
                            await delete_namespace(client, ns, 120)
                    await client.close()
    except KubeletUnavailable as e:
        return not_ran(str(e))
    per_spec = {s.name: diff_spec(s, k[s.name], w[s.name]) for s in specs}
    if getattr(args, "sequences", None):
        write_sequences(Path(args.sequences), k, w)
    result: JSON = {
        "ran": True,
        "kubelet_version": K8S_VERSION,
        "image": busybox,
        "compared": "per field: the sequence of values it took (timestamps, IDs, IPs left out); "
        "events: the type/reason set",
        "accepted_differences": status_diff.ACCEPTED,
        "same": sorted(n for n, d in per_spec.items() if d["same"]),
        "summary": {n: d["fields_differing"] for n, d in per_spec.items()},
        "summary_once_started": {n: d["fields_differing_once_started"] for n, d in per_spec.items()},
        "events_summary": {n: d["events"] for n, d in per_spec.items()},
        "specs": per_spec,
    }
    write_result(SCENARIO, result)
    return {"scenario": SCENARIO, **result}


def summary_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    if not result.get("ran"):
        return [("ran", "no"), ("reason", str(result.get("reason"))[:300])]
    rows = []
    for name, spec in (result.get("specs") or {}).items():
        fields = spec.get("fields_differing") or []
        ev = spec.get("events") or {}
        ev_diff = [f"-{r}" for r in ev.get("only_kubelet") or []]
        ev_diff += [f"+{r}" for r in ev.get("only_warmlet") or []]
        text = ", ".join(fields[:6]) + (" ..." if len(fields) > 6 else "") if fields else "same"
        kinds = sorted({a.get("accepted", "") for a in (spec.get("accepted") or {}).values()})
        if kinds:
            text += f" (accepted: {', '.join(kinds)})"
        if ev_diff:
            text += f" | events {' '.join(ev_diff)}"
        rows.append((name, text))
    return rows


if __name__ == "__main__":
    from bench.cli import module_main

    module_main("bench.differential")
