"""Conformance tier: a fast, meaningful subset of Kubernetes' own [NodeConformance] specs.

The same code as ``warmlet bench conformance`` (bench/conformance.py): the pinned release's
e2e suite (scripts/build-e2e.sh, cached) runs the CI subset (``CI_SUBSET`` of
bench/conformance_report.py: probes, lifecycle hooks, env, volumes, restart policy / init
containers, termination message) against a warmlet CRI node that is the bed's only schedulable
node. Any failed spec of the subset fails the test, with the first line of each failure.
"""

from __future__ import annotations

import asyncio

import pytest

from bench import conformance_report as report
from bench.conformance import conformance, new_workdir
from bench.harness import Bed
from testbed import e2e_images
from testbed.bed import TestBed

pytestmark = pytest.mark.conformance


async def test_node_conformance_subset(testbed: TestBed) -> None:
    await asyncio.to_thread(e2e_images.ensure_binaries)
    bed = Bed(
        kubeconfig=str(testbed.admin_kubeconfig),
        cri_endpoint=f"unix://{testbed.containerd_socket}",
        registry=str(testbed.registry),
        images=dict(testbed.images),
        testbed=testbed,
    )
    result = await conformance(bed, report.subset_focus(), 4, 12 * 60, new_workdir())
    specs = result["specs"]
    ran = {n: s for n, s in specs.items() if s["state"] != "skipped"}
    missing = [n for n in report.CI_SUBSET if not any(n in name for name in ran)]
    failed = {n: s["reason"] for n, s in specs.items() if s["state"] == "failed"}
    assert not missing, (
        f"subset specs that did not run (renamed or skipped?): {missing}; dir {result['workdir']}"
    )
    assert not failed, f"failed specs (log: {result['workdir']}/e2e.log):\n" + "\n".join(
        f"- {n}: {r}" for n, r in failed.items()
    )
