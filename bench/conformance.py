"""Node conformance: Kubernetes' own e2e suite's [NodeConformance] specs against a warmlet CRI node.

Why: "behaves like a kubelet" is only a claim until the kubelet's own conformance specs say so.
This runs the pinned release's ``e2e.test`` (built by ``scripts/build-e2e.sh``) through the
Ginkgo CLI (specs in parallel, one merged report) against the test bed, whose only schedulable
node is a warmlet CRI node (no taint; any other node is cordoned for the run and uncordoned
after). The suite's images are built offline and pushed to the bed's registry
(:mod:`testbed.e2e_images`); ``KUBE_TEST_REPO_LIST`` points the suite at them.

Specs needing a host feature a virtual node cannot provide, or an image that cannot be built
offline, are skipped with a reason (the table in :mod:`bench.conformance_report`). The JUnit
report becomes ``bench/results/conformance.json``: spec name → state (passed / failed / skipped)
with a reason for every skip and the first line of every failure, counts per area.

    warmlet bench conformance [--focus REGEX] [--procs 4] [--timeout-minutes 120]
    warmlet bench conformance --quick        # the CI subset (bench.conformance_report.CI_SUBSET)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench import conformance_report as report
from bench.common import RESULTS_DIR, write_result
from bench.harness import REPO_ROOT, Bed, bed_session, warmlet_node
from provider.kubeclient import ApiError, KubeClient
from testbed import e2e_images
from testbed.util import bin_dir, kv

log = logging.getLogger("bench.conformance")
SCENARIO = "conformance"
JSON = dict[str, Any]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--focus",
        default=None,
        help="run only the [NodeConformance] specs whose names match this regexp "
        "(default: all of them; --quick: the CI subset)",
    )
    parser.add_argument("--procs", type=int, default=4, help="specs run in parallel (Ginkgo processes)")
    parser.add_argument("--timeout-minutes", type=float, default=None, help="whole-suite timeout")
    parser.add_argument("--junit", default=None, help="no run: re-classify a previous run's JUnit report")
    parser.add_argument(
        "--output", default=None, help="result file (default bench/results/conformance.json; --quick: none)"
    )


def ginkgo_command(
    bins: Path,
    kubeconfig: str,
    report_dir: Path,
    repo_list: Path,
    focus: str,
    procs: int,
    timeout_s: int,
    cordoned: int = 0,
) -> list[str]:
    """The Ginkgo CLI running ``e2e.test``: ginkgo flags, then the suite's own flags after ``--``.

    ``cordoned``: other nodes cordoned for the run, which the suite's start-up check ("all nodes
    schedulable") must tolerate."""
    return [
        str(bins / "ginkgo"),
        f"--procs={max(1, procs)}",
        f"--timeout={timeout_s}s",
        "--no-color",
        str(bins / "e2e.test"),
        "--",
        f"--kubeconfig={kubeconfig}",
        "--provider=skeleton",
        f"--report-dir={report_dir}",
        f"--kube-test-repo-list={repo_list}",
        f"--kubectl-path={bins / 'kubectl'}",
        f"--e2e-output-dir={report_dir}",
        "--disable-log-dump=true",
        "--node-schedulable-timeout=2m",
        f"--allowed-not-ready-nodes={cordoned}",
        # the label selects [NodeConformance]; focus (several --ginkgo.focus are OR-ed) narrows it
        f"--ginkgo.label-filter={report.LABEL}",
        *([f"--ginkgo.focus={focus}"] if focus else []),
        f"--ginkgo.skip={report.skip_regex()}",
    ]


async def _set_unschedulable(client: KubeClient, node: str, value: bool) -> None:
    with contextlib.suppress(ApiError):
        await client.patch(f"/api/v1/nodes/{node}", {"spec": {"unschedulable": value or None}})


@contextlib.asynccontextmanager
async def only_schedulable(kubeconfig: str, node: str) -> AsyncIterator[list[str]]:
    """Cordon every other schedulable node for the run (uncordoned after); yields their names."""
    client = await KubeClient.from_kubeconfig(kubeconfig)
    cordoned: list[str] = []
    try:
        for n in (await client.list_all("/api/v1/nodes")).get("items") or []:
            name = n["metadata"]["name"]
            if name != node and not (n.get("spec") or {}).get("unschedulable"):
                await _set_unschedulable(client, name, True)
                cordoned.append(name)
        if cordoned:
            log.info(kv("cordoned other nodes for the run", nodes=",".join(cordoned)))
        yield cordoned
    finally:
        for name in cordoned:
            await _set_unschedulable(client, name, False)
        await client.close()


async def _run_suite(cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> int:
    """Run the suite in its own process group; on timeout or cancellation interrupt it (Ginkgo
    then still writes its report), kill it 60 s later."""
    with open(log_path, "ab") as out:  # noqa: ASYNC230 - opening a log file does not block
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                try:
                    await asyncio.wait_for(asyncio.shield(proc.wait()), 60)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()


async def run_suite(bed: Bed, focus: str, procs: int, timeout_s: int, workdir: Path) -> tuple[int, Path]:
    """Images pushed, warmlet node up as the only schedulable node, the suite run; (rc, junit)."""
    bins = bin_dir()
    if not bed.registry:
        raise RuntimeError("the suite's images need the bed's registry (WARMLET_REGISTRY)")
    repo_list = await asyncio.to_thread(e2e_images.prepare, bed.registry, workdir / "repo-list.yaml", bins)
    report_dir = workdir / "report"
    async with (
        warmlet_node(bed, "cri", name="conformance", node={"taint": False}) as node,
        only_schedulable(bed.kubeconfig, node.name) as cordoned,
    ):
        cmd = ginkgo_command(
            bins, bed.kubeconfig, report_dir, repo_list, focus, procs, timeout_s, len(cordoned)
        )
        env = {**os.environ, "KUBE_TEST_REPO_LIST": str(repo_list)}
        log_path = workdir / "e2e.log"
        log.info(kv("running the e2e suite", log=log_path, node_log=node.log_path, procs=procs))
        rc = await _run_suite(cmd, env, log_path, timeout_s + 300)
    return rc, report_dir / "junit_01.xml"


async def conformance(bed: Bed, focus: str, procs: int, timeout_s: int, workdir: Path) -> JSON:
    """Run the suite on ``bed`` (focus: an extra regexp, "" for all [NodeConformance] specs) and
    build the result document (without machine stamp)."""
    t0 = time.monotonic()
    rc, junit = await run_suite(bed, focus, procs, timeout_s, workdir)
    seconds = round(time.monotonic() - t0, 1)
    if not junit.exists():
        raise RuntimeError(f"the suite wrote no report (exit {rc}); its log: {workdir / 'e2e.log'}")
    return {
        "suite_exit_code": rc,
        "seconds": seconds,
        "procs": procs,
        "workdir": str(workdir),
        **from_junit(junit, focus),
    }


def from_junit(junit: Path, focus: str) -> JSON:
    """The classified specs, counts and failures of a JUnit report (``--junit``: no run)."""
    patterns = [report.FOCUS, *([focus] if focus else [])]
    specs = report.classify(report.parse_junit(junit.read_text()), patterns)
    return {
        "focus": patterns,
        "skip": report.skip_regex(),
        "counts": report.counts(specs),
        "failures_by_area": report.failures_by_cause(specs),
        "skip_rules": [r.__dict__ for r in report.SKIP_RULES],
        "specs": specs,
    }


def reclassify(junit: Path, focus: str) -> JSON:
    """The result document of a previous run from its run dir (report/junit_01.xml, e2e.log)."""
    workdir = junit.resolve().parent.parent
    log_path = workdir / "e2e.log"
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    procs = re.search(r"Running in parallel across (\d+) processes", log_text)
    return {
        "seconds": report.suite_seconds(log_text),
        "procs": int(procs.group(1)) if procs else 1,
        "workdir": str(workdir),
        **from_junit(junit, focus),
    }


def new_workdir() -> Path:
    """A run directory under the repo's .warmlet/ (suite log, JUnit report, repo list)."""
    (REPO_ROOT / ".warmlet").mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="conformance-", dir=REPO_ROOT / ".warmlet"))


async def run(args: argparse.Namespace, quick: bool) -> JSON:
    focus = args.focus or (report.subset_focus() if quick else "")
    timeout_s = int((args.timeout_minutes or (15 if quick else 150)) * 60)
    if args.junit:  # re-classify a previous run's report (keeping its timing) without running
        result: JSON = await asyncio.to_thread(reclassify, Path(args.junit), focus)
    else:
        await asyncio.to_thread(e2e_images.ensure_binaries)
        async with bed_session(args.kubeconfig, args.cri_endpoint) as bed:
            result = await conformance(bed, focus, args.procs, timeout_s, new_workdir())
    output = args.output or ("" if quick else str(RESULTS_DIR / "conformance.json"))
    if output:
        path = write_result(SCENARIO, result, Path(output).parent)
        if path != Path(output):
            path.rename(output)
    return result


def summary_rows(result: JSON) -> list[tuple[str, str]]:
    c = result.get("counts") or {}
    rows = [
        ("specs (passed / failed / skipped)", f"{c.get('passed')} / {c.get('failed')} / {c.get('skipped')}"),
        ("specs not run (suite timeout)", str(c.get(report.NOT_RUN, 0))),
        ("pass rate of the specs run", f"{c.get('pass_rate_of_run', 0):.1%}"),
        ("skipped share", f"{c.get('skipped_share', 0):.1%}"),
        ("suite wall time", f"{result.get('seconds')} s"),
    ]
    for a, n in (c.get("per_area") or {}).items():
        rows.append((f"  {a}", f"{n['passed']} / {n['failed']} / {n['skipped']}"))
    return rows
