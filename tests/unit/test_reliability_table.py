"""The README's Reliability table: merging runs, soak rows and rewriting the section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed import reliability as rel


def _row(i: str, outcome: str = rel.PASSED, **kw: object) -> rel.Row:
    return rel.Row(id=i, fault=f"fault {i}", checked=f"checked {i}", outcome=outcome, **kw)  # type: ignore[arg-type]


def test_merge_replaces_rows_of_this_run_and_drops_unknown_ones() -> None:
    old = {"a": _row("a", rel.FAILED), "b": _row("b"), "gone": _row("gone"), "s": _row("s", kind="soak")}
    merged = rel.merge(old, [_row("a")], known_ids={"a", "b"})
    assert set(merged) == {"a", "b", "s"}
    assert merged["a"].outcome == rel.PASSED


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "r.json"
    rows = {"x": _row("x", details=["10 kills", "0 duplicates"], seconds=12.5)}
    rel.save_rows(p, rows)
    assert rel.load_rows(p) == rows
    assert rel.load_rows(tmp_path / "missing.json") == {}


def test_render_marks_failures_and_soaks_and_escapes_pipes() -> None:
    table = rel.render(
        [_row("b", rel.FAILED, details=["a|b"]), _row("a"), _row("z", kind="soak", when="2026-11-23")]
    )
    lines = table.splitlines()
    assert lines[0].startswith("| Fault |")
    assert "fault a" in lines[2] and "✅ pass" in lines[2]
    assert "fault b" in lines[3] and "❌ FAIL" in lines[3] and "a\\|b" in lines[3]
    assert "long soak in bench, last run 2026-11-23" in lines[4]


def test_soak_rows_read_bench_results(tmp_path: Path) -> None:
    (tmp_path / "soak-lease.json").write_text(
        json.dumps({"reliability": {"fault": "f", "checked": "c", "outcome": "passed", "when": "d"}})
    )
    (tmp_path / "soak-broken.json").write_text("{")
    (tmp_path / "scale.json").write_text("{}")
    (row,) = rel.soak_rows(tmp_path)
    assert row.id == "bench:soak-lease" and row.kind == "soak"


def test_replace_section_keeps_markers_and_surroundings() -> None:
    text = f"intro\n{rel.BEGIN}\nold table\n{rel.END}\noutro\n"
    out = rel.replace_section(text, "| new |\n")
    assert out == f"intro\n{rel.BEGIN}\n| new |\n{rel.END}\noutro\n"
    assert rel.replace_section(out, "| new |\n") == out
    with pytest.raises(ValueError):
        rel.replace_section("no markers", "x")
