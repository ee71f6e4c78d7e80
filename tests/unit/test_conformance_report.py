"""Pure parts of the node-conformance scenario: skip table, areas, JUnit parsing, counts, images."""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import conformance_report as cr
from bench.conformance import ginkgo_command
from testbed import e2e_images

NC = "[NodeConformance]"
PROBE = "[sig-node] Probing container should be restarted with a exec liveness probe"
EMPTYDIR = "[sig-storage] EmptyDir volumes should support (root,0644,tmpfs)"

JUNIT = f"""<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="6" disabled="0" errors="0" failures="1" time="12.5">
  <testsuite name="Kubernetes e2e suite" package="/" tests="6" failures="1" skipped="3">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1"/>
    <testcase name="[It] {PROBE} {NC} [Conformance]"
      classname="Kubernetes e2e suite" status="failed" time="120.4">
      <failure type="failed">[FAILED] Timed out after 240s: pod restart count 0, want 1
In [It] at: test/e2e/common/node/container_probe.go:1 @ 11/28/26 13:00:00
</failure>
    </testcase>
    <testcase name="[It] [sig-storage] EmptyDir volumes should support (root,0644,tmpfs) {NC} [Conformance]"
      classname="Kubernetes e2e suite" status="passed" time="6.2"/>
    <testcase name="[It] [sig-node] Pods should be evicted {NC} [Serial]" classname="Kubernetes e2e suite"
      status="skipped" time="0"><skipped message="skipped"/></testcase>
    <testcase name="[It] [sig-node] Sysctls should support sysctls {NC} [Environment:NotInUserNS]"
      classname="Kubernetes e2e suite" status="skipped" time="0.1">
      <skipped message="skipped - Only supported for node OS distro [gci ubuntu] (not debian)"/></testcase>
    <testcase name="[It] [sig-apps] Deployment should work [Conformance]" classname="Kubernetes e2e suite"
      status="skipped" time="0"><skipped message="skipped"/></testcase>
    <testcase name="[ReportAfterSuite] Kubernetes e2e JUnit report" classname="Kubernetes e2e suite"
      status="passed" time="0"/>
  </testsuite>
</testsuites>
"""


def test_first_line_skips_location_lines() -> None:
    text = "[FAILED] in [It] - o.go:263 @ 11/28/26\n[FAILED] expected pod success: boom\nIn [It] at: x.go:1"
    assert cr.first_line(text) == "expected pod success: boom"
    gomega = '[FAILED] Expected\n    <string>: ""\nto equal\n    <string>: "DONE"\n\nIn [It] at: x.go:1'
    assert cr.first_line(gomega) == 'Expected <string>: "" to equal <string>: "DONE"'


def test_parse_junit_keeps_specs_only_with_first_failure_line() -> None:
    rs = {r.name: r for r in cr.parse_junit(JUNIT)}
    assert len(rs) == 5  # suite-level nodes left out
    probe = rs[
        f"[sig-node] Probing container should be restarted with a exec liveness probe {NC} [Conformance]"
    ]
    assert probe.state == "failed"
    assert probe.reason == "Timed out after 240s: pod restart count 0, want 1"
    assert probe.seconds == pytest.approx(120.4)


def test_classify_focus_reasons_and_counts() -> None:
    specs = cr.classify(cr.parse_junit(JUNIT))
    assert len(specs) == 4  # the Deployment spec is not [NodeConformance]
    serial = specs[f"[sig-node] Pods should be evicted {NC} [Serial]"]
    assert serial["state"] == "skipped" and serial["kind"] == "host" and "exclusive" in serial["reason"]
    sysctl = specs[f"[sig-node] Sysctls should support sysctls {NC} [Environment:NotInUserNS]"]
    assert sysctl["kind"] == "suite" and sysctl["reason"].startswith("Only supported for node OS distro")
    c = cr.counts(specs)
    assert (c["total"], c["passed"], c["failed"], c["skipped"]) == (4, 1, 1, 2)
    assert c["pass_rate_of_run"] == 0.5 and c["skipped_share"] == 0.5
    assert c["per_area"]["probes"] == {"passed": 0, "failed": 1, "skipped": 0}
    assert c["per_area"]["volumes"] == {"passed": 1, "failed": 0, "skipped": 0}
    assert cr.failures_by_cause(specs) == {"probes": [next(n for n in specs if "Probing" in n)]}


def test_classify_extra_focus_narrows() -> None:
    specs = cr.classify(cr.parse_junit(JUNIT), [cr.FOCUS, "EmptyDir"])
    assert list(specs) == [
        f"[sig-storage] EmptyDir volumes should support (root,0644,tmpfs) {NC} [Conformance]"
    ]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        (f"[sig-node] Kubelet should restart {NC} [Disruptive]", "host"),
        (f"[sig-node] X [Feature:SidecarContainers] {NC}", "host"),
        (f"[sig-node] X [NodeFeature:RuntimeHandler] {NC}", "host"),
        (f"[sig-node] X [FeatureGate:Foo] [Alpha] {NC}", "host"),
        (f"[sig-node] X [FeatureGate:Foo] [Beta] {NC}", None),  # beta, on by default: a kubelet has it
        (
            f"[sig-node] Pods should have their auto-restart back-off timer reset on image update {NC}",
            "image",
        ),
        (f"[sig-node] Probing container should be restarted with a exec liveness probe {NC}", None),
        (f"[sig-storage] HostPath should support r/w {NC}", "host"),
        (f"[sig-storage] HostPath should give a volume the correct mode [LinuxOnly] {NC}", "host"),
        (
            "[sig-network] Networking Granular Checks: Pods should function for node-pod "
            f"communication: http [LinuxOnly] {NC} [Conformance]",
            "host",
        ),
        (
            "[sig-node] Downward API should provide host IP and pod IP as an env var if pod uses "
            f"host network [LinuxOnly] {NC}",
            "host",
        ),
        (
            "[sig-node] Kubelet with pods in a privileged namespace when scheduling an agnhost Pod "
            f"with hostAliases and hostNetwork should write entries to /etc/hosts when hostNetwork is "
            f"enabled {NC}",
            "host",
        ),
        (f"[sig-node] KubeletManagedEtcHosts should test kubelet managed /etc/hosts file {NC}", "host"),
        (f"[sig-storage] HostPath should support a new mode {NC}", None),  # not listed: runs
        (f"[sig-node] Downward API should provide host IP as an env var {NC}", None),
        (f"[sig-node] GA feature [FeatureGate:Foo] {NC}", None),
    ],
)
def test_skip_rule_table(name: str, kind: str | None) -> None:
    rule = cr.skip_rule(name)
    assert (rule.kind if rule else None) == kind
    # the one --ginkgo.skip regexp agrees with the table (Python re here; patterns are RE2-safe)
    assert bool(re.search(cr.skip_regex(), name)) == (kind is not None)


@given(st.lists(st.sampled_from(["passed", "failed", "skipped"]), max_size=30))
def test_counts_add_up_and_every_skip_has_a_reason(states: list[str]) -> None:
    results = [cr.SpecResult(f"[sig-node] spec {i} {NC}", s, "") for i, s in enumerate(states)]
    specs = cr.classify(results)
    c = cr.counts(specs)
    assert c["passed"] + c["failed"] + c["skipped"] == c["total"] == len(states)
    assert sum(sum(a.values()) for a in c["per_area"].values()) == len(states)
    assert all(s["reason"] for s in specs.values() if s["state"] == "skipped")


def test_ci_subset_focus_matches_its_specs_only() -> None:
    focus = cr.subset_focus()
    for n in cr.CI_SUBSET:
        assert re.search(focus, f"[sig-node] {n} {NC}")
    assert not re.search(focus, f"[sig-node] Pods should be evicted {NC}")
    areas = {cr.area(f"[sig-node] {n}") for n in cr.CI_SUBSET if "EmptyDir" not in n}
    assert {"probes", "lifecycle-hooks", "env"} <= areas


def test_area_table() -> None:
    assert cr.area("[sig-node] Probing container should x") == "probes"
    assert cr.area("[sig-node] Container Lifecycle Hook when x") == "lifecycle-hooks"
    assert cr.area("[sig-storage] ConfigMap should be consumable from pods in volume") == "volumes"
    assert cr.area("[sig-node] ConfigMap should be consumable via environment variable") == "env"
    assert cr.area("[sig-node] something else") == "other"


def test_ginkgo_command_passes_focus_skip_and_repo_list(tmp_path: object) -> None:
    from pathlib import Path

    cmd = ginkgo_command(Path("/b"), "/k", Path("/r"), Path("/l.yaml"), "Probing", 3, 600)
    assert cmd[:2] == ["/b/ginkgo", "--procs=3"] and "/b/e2e.test" in cmd
    after = cmd[cmd.index("--") + 1 :]
    assert "--kube-test-repo-list=/l.yaml" in after and "--provider=skeleton" in after
    assert "--ginkgo.label-filter=NodeConformance" in after
    assert [a for a in after if a.startswith("--ginkgo.focus")] == ["--ginkgo.focus=Probing"]
    assert f"--ginkgo.skip={cr.skip_regex()}" in after


# ------------------------------------------------------------------ e2e images


def test_repo_list_overrides_every_public_registry_but_not_invalid_or_private() -> None:
    rl = e2e_images.repo_list("127.0.0.1:5000")
    assert rl["promoterE2eRegistry"] == "127.0.0.1:5000/e2e-test-images"
    assert rl["gcRegistry"] == "127.0.0.1:5000/k8s"
    assert "invalidRegistry" not in rl and "privateRegistry" not in rl
    # every image is pushed under an overridden prefix
    prefixes = {v.split("/", 1)[1] for v in rl.values()}
    assert all(img.repo.rsplit("/", 1)[0] in prefixes for img in e2e_images.images())


def _elf(interp: bool) -> bytes:
    phoff, phentsize = 64, 56
    types = [1, 3, 1] if interp else [1, 1]
    head = bytearray(b"\x7fELF" + bytes([2, 1, 1]) + bytes(57))
    struct.pack_into("<Q", head, 32, phoff)
    struct.pack_into("<HH", head, 54, phentsize, len(types))
    for t in types:
        head += struct.pack("<I", t) + bytes(phentsize - 4)
    return bytes(head)


def test_is_static_elf() -> None:
    assert e2e_images.is_static_elf(_elf(False))
    assert not e2e_images.is_static_elf(_elf(True))
    with pytest.raises(ValueError):
        e2e_images.is_static_elf(b"#!/bin/sh\n" + bytes(100))


def test_markdown_table_has_areas_totals_and_failures() -> None:
    specs = cr.classify(cr.parse_junit(JUNIT))
    text = cr.markdown({"counts": cr.counts(specs), "specs": specs})
    assert "| probes | 0 | 1 | 0 |" in text
    assert "| **total** | **1** | **1** | **2** |" in text
    assert f"- {PROBE} {NC} [Conformance]: Timed out after 240s" in text


def test_an_interrupted_suite_leaves_unreached_specs_not_run_not_skipped() -> None:
    results = [
        cr.SpecResult(f"{PROBE} {NC}", "interrupted", "x"),
        cr.SpecResult(f"{EMPTYDIR} {NC}", "skipped", "skipped"),  # never reached
        cr.SpecResult(f"[sig-node] Pods should be evicted {NC} [Serial]", "skipped", "skipped"),  # filtered
        cr.SpecResult(f"[sig-node] Sysctls {NC}", "skipped", "skipped - Only supported for gci"),
    ]
    specs = cr.classify(results)
    states = [s["state"] for s in specs.values()]
    assert sorted(states) == ["not-run", "not-run", "skipped", "skipped"]
    c = cr.counts(specs)
    assert c["not-run"] == 2 and c["skipped"] == 2
    # without an interruption, a bare "skipped" is the suite's own run-time skip
    assert cr.classify(results[1:2])[f"{EMPTYDIR} {NC}"]["state"] == "skipped"


def test_suite_seconds_from_the_ginkgo_log() -> None:
    assert cr.suite_seconds("x\nGinkgo ran 1 suite in 13.46057266s\nTest Suite Passed") == 13.5
    assert cr.suite_seconds("Ginkgo ran 1 suite in 1h2m3.5s") == 3723.5
    assert cr.suite_seconds("Ginkgo ran 1 suite in 4m0s") == 240.0
    assert cr.suite_seconds("no summary") is None


def test_host_rejected_specs_say_what_warmlet_rejects() -> None:
    rule = cr.skip_rule(f"[sig-storage] HostPath should support r/w {NC}")
    assert rule is not None
    assert rule.reason == (
        "host feature a virtual node cannot provide (warmlet rejects the pod: hostPath volume)"
    )
    rule = cr.skip_rule(f"[sig-network] Pods should function for node-pod communication: http {NC}")
    assert rule is not None and rule.reason.endswith("(warmlet rejects the pod: hostNetwork: true)")
