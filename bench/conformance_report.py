"""Pure logic of the node-conformance run: which specs run, why the others are skipped, the
area of each spec, and the result document built from the suite's JUnit report.

No I/O here (``bench/conformance.py`` runs the suite): the tables are small and explicit so that
every skip in ``bench/results/conformance.json`` carries a reason a reader can check.

Reasons a spec is skipped (the only two the issue allows, plus the suite's own runtime skips):

- ``host``: a host feature a virtual node cannot provide (node restarts, exclusive use of the
  node, host namespaces/devices/sysctls, feature-gated or alpha/beta features of a real kubelet);
- ``image``: an image of the suite that cannot be built offline (``testbed.e2e_images`` builds
  agnhost, busybox, nonroot, nonewprivs and pause; not nginx, kitten, nautilus, ...);
- ``suite``: the suite skipped the spec itself at run time (its message is the reason).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

LABEL = "NodeConformance"  # the Ginkgo label of the specs (--ginkgo.label-filter)
FOCUS = r"\[NodeConformance\]"  # the same, as it appears in spec names


@dataclass(frozen=True)
class SkipRule:
    """Specs whose name matches ``pattern`` are not run, for ``reason`` (of ``kind``)."""

    pattern: str
    kind: str  # "host" | "image"
    reason: str


# Pods warmlet rejects by design (provider/validation.py): the spec's pod asks for the host's
# filesystem or network namespace, which a virtual node does not expose.
HOST_REJECTED = "host feature a virtual node cannot provide (warmlet rejects the pod:"

# Checked in order; the first match gives the reason. Patterns are Go RE2-compatible (they also
# go into --ginkgo.skip): no look-arounds.
SKIP_RULES: tuple[SkipRule, ...] = (
    SkipRule(r"\[Disruptive\]", "host", "disrupts the node (restarts or stops the kubelet or the host)"),
    SkipRule(
        r"\[Serial\]",
        "host",
        "needs exclusive use of the whole node (node-wide resources, eviction, node-level state)",
    ),
    SkipRule(r"\[Flaky\]", "host", "marked flaky by Kubernetes itself"),
    SkipRule(
        r"\[Feature:[^\]]+\]|\[Alpha\]",
        "host",
        "needs an optional or alpha feature (off on a default cluster and kubelet)",
    ),
    SkipRule(
        r"\[NodeFeature:[^\]]+\]",
        "host",
        "needs a host feature of the node (kernel, devices, runtime handler) a virtual node cannot provide",
    ),
    *(
        SkipRule(re.escape(spec), "host", f"{HOST_REJECTED} {why})")
        for spec, why in (
            ("HostPath should give a volume the correct mode", "hostPath volume"),
            ("HostPath should support r/w", "hostPath volume"),
            ("HostPath should support subPath", "hostPath volume"),
            ("Pods should function for node-pod communication: http", "hostNetwork: true"),
            ("Pods should function for node-pod communication: udp", "hostNetwork: true"),
            ("provide host IP and pod IP as an env var if pod uses host network", "hostNetwork: true"),
            ("with hostAliases and hostNetwork should write entries to /etc/hosts", "hostNetwork: true"),
            ("KubeletManagedEtcHosts should test kubelet managed /etc/hosts file", "hostPath volume"),
        )
    ),
    SkipRule(
        r"auto-restart back-off timer reset on image update",
        "image",
        "needs the nginx image, which cannot be built offline",
    ),
    *(
        SkipRule(
            re.escape(spec),
            "image",
            "needs the suite's busybox 1.37, whose sh keeps environment names with '-' (data-1); "
            "the busybox buildable offline here (Debian's 1.35) drops them before `env` prints "
            "(warmlet does pass them: tests/unit/test_resolve_env*)",
        )
        for spec in (
            "Secrets should be consumable via the environment",
            "ConfigMap should be consumable via the environment",
        )
    ),
)


def skip_rule(name: str, rules: Iterable[SkipRule] = SKIP_RULES) -> SkipRule | None:
    """The first rule whose pattern matches the spec name, or None (the spec runs)."""
    for rule in rules:
        if re.search(rule.pattern, name):
            return rule
    return None


def skip_regex(rules: Iterable[SkipRule] = SKIP_RULES) -> str:
    """One --ginkgo.skip regular expression for all rules."""
    return "|".join(f"(?:{r.pattern})" for r in rules)


# Area of a spec, by name: first match. Used for the per-area counts and for the CI subset.
AREAS: tuple[tuple[str, str], ...] = (
    (r"Probing (container|restartable init container)", "probes"),
    (r"Container Lifecycle Hook|Lifecycle [Ss]leep|\bPreStop\b", "lifecycle-hooks"),
    (r"Variable Expansion|Downward API should provide|\benv(ironment)? var", "env"),
    (r"\[sig-storage\]", "volumes"),
    (r"InitContainer", "init-containers"),
    (r"Container Runtime", "runtime"),
    (r"Security Context|\bSysctl|\bPrivileged|AppArmor", "security-context"),
    (r"\[sig-network\]", "network"),
    (r"ConfigMap|Secrets", "configmap-secret"),
    (r"\[sig-node\] Pods\b|PodTemplates|Pods Extended|Ephemeral Containers|Override hostname", "pods"),
    (r"Kubelet|Lease|RuntimeClass|etc hosts|Containers should", "kubelet"),
)


def area(name: str) -> str:
    for pattern, label in AREAS:
        if re.search(pattern, name):
            return label
    return "other"


# The CI subset: fast specs of the areas the issue names (probes, lifecycle hooks, env,
# volumes, restart policy). Substrings of spec names, joined into one focus regexp.
CI_SUBSET: tuple[str, ...] = (
    "Probing container with readiness probe that fails should never be ready and never restart",
    "Probing container should be restarted with a exec",
    "Probing container should be restarted with a /healthz http liveness probe",
    "Probing container should be ready immediately after startupProbe succeeds",
    "Container Lifecycle Hook when create a pod with lifecycle hook should execute poststart exec hook",
    "Container Lifecycle Hook when create a pod with lifecycle hook should execute prestop exec hook",
    "Variable Expansion should allow composing env vars into new env vars",
    "Downward API should provide pod name, namespace and IP address as env vars",
    "ConfigMap should be consumable via environment variable",
    "ConfigMap should be consumable from pods in volume with defaultMode set",
    "Secrets should be consumable from pods in volume with defaultMode set",
    "Downward API volume should provide container's cpu limit",
    "EmptyDir volumes should support (root,0644,tmpfs)",
    "EmptyDir volumes should support (non-root,0666,default)",
    "Container Runtime blackbox test on terminated container should report termination message",
    "should not start app containers and fail the pod if init containers fail on a RestartNever pod",
    "InitContainer [NodeConformance] should invoke init containers on a RestartAlways pod",
)


def subset_focus(names: Iterable[str] = CI_SUBSET) -> str:
    """A focus regexp matching exactly the specs whose names contain one of ``names``."""
    return "|".join(re.escape(n) for n in names)


@dataclass(frozen=True)
class SpecResult:
    name: str
    state: str  # passed | failed | skipped
    reason: str = ""
    seconds: float = 0.0


# Ginkgo states of a spec stopped by an interrupt or by the suite timeout (not a verdict).
INTERRUPTED = ("interrupted", "timedout", "aborted")
NOT_RUN = "not-run"
_SUITE_NODE = re.compile(r"^\[(It)\]\s*")


def first_line(text: str, max_lines: int = 4) -> str:
    """A failure's message in one line: its first paragraph (Ginkgo's ``[FAILED]`` prefix and
    location lines left out; gomega's multi-line "Expected / <x> / to equal / <y>" joined)."""
    kept: list[str] = []
    for raw in text.splitlines():
        line = re.sub(r"^\[(FAILED|PANICKED|TIMEDOUT|INTERRUPTED)\]\s*", "", raw.strip())
        if re.match(r"(in|In) \[\w+\]", line):  # a location line, not the message
            continue
        if not line:
            if kept:
                break
            continue
        kept.append(line)
        if len(kept) >= max_lines:
            break
    return re.sub(r"\s+", " ", " ".join(kept))[:300]


def parse_junit(xml_text: str) -> list[SpecResult]:
    """The specs ("[It]" test cases) of a ginkgo JUnit report, suite-level nodes left out."""
    root = ET.fromstring(xml_text)
    out: list[SpecResult] = []
    for tc in root.iter("testcase"):
        raw = tc.get("name", "")
        m = _SUITE_NODE.match(raw)
        if not m:
            continue
        name = raw[m.end() :].strip()
        seconds = float(tc.get("time") or 0.0)
        failure = tc.find("failure")
        if failure is None:
            failure = tc.find("error")
        skipped = tc.find("skipped")
        if tc.get("status") in INTERRUPTED:
            out.append(SpecResult(name, "interrupted", "the suite was interrupted or timed out", seconds))
        elif failure is not None:
            text = (failure.text or "") or failure.get("message", "")
            out.append(SpecResult(name, "failed", first_line(text) or failure.get("type", "failed"), seconds))
        elif skipped is not None or tc.get("status") in ("skipped", "pending"):
            msg = skipped.get("message", "") if skipped is not None else ""
            out.append(SpecResult(name, "skipped", msg, seconds))
        else:
            out.append(SpecResult(name, "passed", "", seconds))
    return out


def classify(results: Iterable[SpecResult], focus: Sequence[str] = (FOCUS,)) -> dict[str, dict[str, Any]]:
    """Spec name → {state, reason, area, [kind]} for the specs matching every ``focus`` regexp.

    A spec the run skipped gets the reason of its :data:`SKIP_RULES` entry; one the suite
    skipped at run time keeps the suite's message (kind ``suite``). When the suite was
    interrupted (its timeout), specs it never reached, and those it stopped, are ``not-run``:
    no verdict, not a skip."""
    results = list(results)
    interrupted = any(r.state == "interrupted" for r in results)
    specs: dict[str, dict[str, Any]] = {}
    for r in results:
        if not all(re.search(f, r.name) for f in focus):
            continue
        entry: dict[str, Any] = {"state": r.state, "area": area(r.name)}
        unreached = interrupted and r.state == "skipped" and r.reason.strip() in ("", "skipped")
        if r.state == "interrupted" or (unreached and skip_rule(r.name) is None):
            entry.update(state=NOT_RUN, reason="the suite was interrupted (timeout) before it finished")
        elif r.state == "skipped":
            rule = skip_rule(r.name)
            if rule is not None:
                entry.update(reason=rule.reason, kind=rule.kind)
            else:
                msg = re.sub(r"^skipped\s*-?\s*", "", r.reason).strip()
                entry.update(reason=first_line(msg) or "skipped by the suite at run time", kind="suite")
        elif r.state == "failed":
            entry["reason"] = r.reason
        if r.seconds:
            entry["seconds"] = round(r.seconds, 1)
        specs[r.name] = entry
    return dict(sorted(specs.items()))


def counts(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Totals, per-area counts, the pass rate over the specs that ran, and the skip share."""
    total = Counter(s["state"] for s in specs.values())
    per_area: dict[str, Counter[str]] = {}
    for s in specs.values():
        per_area.setdefault(s["area"], Counter())[s["state"]] += 1
    ran = total["passed"] + total["failed"]
    n = sum(total.values())
    return {
        "total": n,
        "passed": total["passed"],
        "failed": total["failed"],
        "skipped": total["skipped"],
        NOT_RUN: total[NOT_RUN],
        "pass_rate_of_run": round(total["passed"] / ran, 3) if ran else 0.0,
        "skipped_share": round(total["skipped"] / n, 3) if n else 0.0,
        "skipped_by_kind": dict(
            sorted(Counter(s.get("kind", "") for s in specs.values() if s["state"] == "skipped").items())
        ),
        "per_area": {
            a: {k: c[k] for k in ("passed", "failed", "skipped", NOT_RUN) if k != NOT_RUN or c[k]}
            for a, c in sorted(per_area.items())
        },
    }


def failures_by_cause(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """Failed spec names grouped by area (the feature they exercise)."""
    out: dict[str, list[str]] = {}
    for name, s in specs.items():
        if s["state"] == "failed":
            out.setdefault(s["area"], []).append(name)
    return dict(sorted(out.items()))


def suite_seconds(ginkgo_log: str) -> float | None:
    """The suite's wall time from the Ginkgo CLI's "Ginkgo ran 1 suite in 1h2m3.4s" line."""
    m = re.search(r"Ginkgo ran \d+ suites? in ((?:\d+h)?(?:\d+m)?(?:[\d.]+s)?)", ginkgo_log)
    if not m or not m.group(1):
        return None
    parts = re.findall(r"([\d.]+)([hms])", m.group(1))
    return round(sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in parts), 1)


def markdown(result: Mapping[str, Any]) -> str:
    """The README table: counts per area, then the failed specs with their first failure line."""
    c = result.get("counts") or {}
    lines = ["| area | passed | failed | skipped |", "|---|---:|---:|---:|"]
    for a, n in (c.get("per_area") or {}).items():
        lines.append(f"| {a} | {n['passed']} | {n['failed']} | {n['skipped']} |")
    lines.append(
        f"| **total** | **{c.get('passed', 0)}** | **{c.get('failed', 0)}** | **{c.get('skipped', 0)}** |"
    )
    failed = [
        (n, s.get("reason", "")) for n, s in (result.get("specs") or {}).items() if s["state"] == "failed"
    ]
    if failed:
        lines += ["", "Failed specs:", ""]
        lines += [f"- {n}: {r.replace('|', '/')}" for n, r in failed]
    return "\n".join(lines) + "\n"
