"""The Reliability table (``docs/reliability.md``): rows from the fault suite and the long soaks.

Each fault test carries ``@pytest.mark.reliability(fault=..., checked=...)`` and may add figures
through the ``reliability`` fixture. At the end of a session the plugin
(``testbed/reliability_plugin.py``) merges the outcomes into the untracked run results
:data:`RUN_RESULTS` (rows keyed by test id, so a partial run updates only its rows); a test run
writes no tracked file. ``warmlet bench --report`` then merges those rows into the published rows
:data:`PUBLISHED` (the newer result of a test wins), adds the long soaks of ``bench/`` from their
result files (``bench/results/soak-*.json``, shown with the date of their last run) and renders
:data:`DOC` with :func:`render_page`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from testbed.util import REPO_ROOT

RUN_RESULTS = Path(".warmlet") / "results" / "reliability.json"  # under the repo root, git-ignored
PUBLISHED = Path("tests") / "faults" / "reliability.json"  # the rows docs/reliability.md shows
DOC = Path("docs") / "reliability.md"
SOAK_RESULTS = Path("bench") / "results"

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
_ICON = {PASSED: "✅ pass", FAILED: "❌ FAIL", SKIPPED: "⏭ skipped"}


@dataclass
class Row:
    """One fault: what was injected, what was checked, how it ended and the figures seen."""

    id: str
    fault: str
    checked: str
    outcome: str
    details: list[str] = field(default_factory=list)
    kind: str = "ci"  # "ci" (runs in the README test command) or "soak" (bench, last result)
    when: str = ""
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Row:
        return cls(
            id=str(d["id"]),
            fault=str(d["fault"]),
            checked=str(d["checked"]),
            outcome=str(d["outcome"]),
            details=[str(x) for x in d.get("details", [])],
            kind=str(d.get("kind", "ci")),
            when=str(d.get("when", "")),
            seconds=float(d.get("seconds", 0.0)),
        )


def load_rows(path: Path) -> dict[str, Row]:
    if not path.exists():
        return {}
    return {r["id"]: Row.from_dict(r) for r in json.loads(path.read_text()).get("rows", [])}


def merge(old: Mapping[str, Row], new: Iterable[Row], known_ids: set[str] | None = None) -> dict[str, Row]:
    """Rows of this run replace their previous result; rows of tests that no longer exist go."""
    out = {k: v for k, v in old.items() if known_ids is None or k in known_ids or v.kind == "soak"}
    for r in new:
        out[r.id] = r
    return out


def newest(published: Mapping[str, Row], run: Iterable[Row]) -> dict[str, Row]:
    """Published rows updated by a run's rows, unless the published result is the more recent one
    (ISO dates; a tie goes to the run)."""
    out = dict(published)
    for r in run:
        if r.id not in out or r.when >= out[r.id].when:
            out[r.id] = r
    return out


def existing_tests(ids: Iterable[str], root: Path) -> set[str]:
    """The test ids (``path::name``) whose file still exists under ``root``."""
    return {i for i in ids if (root / i.split("::", 1)[0]).exists()}


def save_rows(path: Path, rows: Mapping[str, Row]) -> None:
    data = {"rows": [asdict(r) for r in sorted(rows.values(), key=lambda r: r.id)]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def soak_rows(results_dir: Path) -> list[Row]:
    """Rows from long soaks run by ``warmlet bench`` (files ``soak-*.json`` with a ``reliability`` key)."""
    rows = []
    for p in sorted(results_dir.glob("soak-*.json")):
        try:
            rel = json.loads(p.read_text()).get("reliability")
        except (OSError, ValueError):
            continue
        if isinstance(rel, Mapping):
            rows.append(Row.from_dict({**rel, "id": f"bench:{p.stem}", "kind": "soak"}))
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(rows: Iterable[Row]) -> str:
    """A Markdown table, CI rows first (in test order), then long soaks."""
    ordered = sorted(rows, key=lambda r: (r.kind != "ci", r.id))
    lines = [
        "| Fault | Checked | Result | Figures |",
        "|---|---|---|---|",
    ]
    for r in ordered:
        result = _ICON.get(r.outcome, r.outcome)
        if r.kind == "soak":
            result = f"{result} (long soak in bench, last run {r.when or 'unknown'})"
        figures = "; ".join(r.details) or "—"
        lines.append(f"| {_cell(r.fault)} | {_cell(r.checked)} | {result} | {_cell(figures)} |")
    return "\n".join(lines) + "\n"


def summary(rows: Iterable[Row]) -> str:
    """The headline: e.g. "14/14 fault tests passed (last run 2026-11-23); 1/1 long soaks passed"."""
    ci = [r for r in rows if r.kind == "ci"]
    soak = [r for r in rows if r.kind == "soak"]
    passed = sum(r.outcome == PASSED for r in ci)
    last = max((r.when for r in ci if r.when), default="unknown")
    text = f"{passed}/{len(ci)} fault tests passed (last run {last})"
    if soak:
        text += f"; {sum(r.outcome == PASSED for r in soak)}/{len(soak)} long soaks passed"
    return text


def render_page(rows: Iterable[Row]) -> str:
    """The whole of docs/reliability.md: what the suite does, where the rows come from, the table."""
    rows = list(rows)
    return "\n".join(
        [
            "# Reliability",
            "",
            "<!-- generated by `warmlet bench --report` (testbed/reliability.py); do not edit by hand -->",
            "",
            "`tests/faults` injects faults into the real test bed while warmlet runs, and tries to misuse",
            "the node. Each test checks every pod's final state, counts containers and sandboxes in",
            "containerd, and reads warmlet's metrics. It runs as the last tier of `./scripts/test.sh`",
            "(`pytest -m faults` alone).",
            "",
            f"A run records its outcomes in `{RUN_RESULTS}` (untracked; `testbed/reliability_plugin.py`);",
            f"`warmlet bench --report` merges them into `{PUBLISHED}` (rows keyed by test, so a partial",
            "run updates only its rows) and writes this page. Long soaks run in `bench/` and show their",
            "last result (`warmlet bench soak-node-ready`: the 2,000-pod load test's long version, 5,000",
            "pods over 10 minutes).",
            "",
            f"**{summary(rows)}**",
            "",
            render(rows),
        ]
    )


def publish(root: Path = REPO_ROOT) -> tuple[Path, list[Row]]:
    """Merge the run results into the published rows, add the soaks, write DOC (and PUBLISHED)."""
    published = load_rows(root / PUBLISHED)
    run = load_rows(root / RUN_RESULTS)
    rows = newest(published, run.values())
    rows = {k: r for k, r in rows.items() if r.kind == "soak" or k in existing_tests(rows, root)}
    for r in soak_rows(root / SOAK_RESULTS):
        rows[r.id] = r
    if rows != published:
        save_rows(root / PUBLISHED, rows)
    doc = root / DOC
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render_page(rows.values()))
    return doc, list(rows.values())
