"""The Reliability table: merging runs, soak rows, publishing docs/reliability.md from the run results."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_newest_keeps_the_more_recent_result() -> None:
    published = {"a": _row("a", rel.FAILED, when="2026-11-20"), "b": _row("b", when="2026-11-23")}
    run = [_row("a", when="2026-11-21"), _row("b", rel.FAILED, when="2026-11-01"), _row("c", when="d")]
    out = rel.newest(published, run)
    assert out["a"].outcome == rel.PASSED  # the run is newer
    assert out["b"].outcome == rel.PASSED  # the published CI result is newer than an old local run
    assert set(out) == {"a", "b", "c"}


def test_summary_counts_ci_and_soak_rows() -> None:
    rows = [_row("a", when="2026-11-22"), _row("b", rel.FAILED, when="2026-11-23"), _row("s", kind="soak")]
    assert rel.summary(rows) == "1/2 fault tests passed (last run 2026-11-23); 1/1 long soaks passed"
    assert rel.summary([]) == "0/0 fault tests passed (last run unknown)"


def test_render_page_is_the_table_under_a_generated_header() -> None:
    rows = [_row("a", when="2026-11-23"), _row("s", kind="soak", when="2026-11-20")]
    page = rel.render_page(rows)
    assert page.startswith("# Reliability\n")
    assert "do not edit by hand" in page and "warmlet bench --report" in page
    assert "**1/1 fault tests passed (last run 2026-11-23); 1/1 long soaks passed**" in page
    assert page.endswith(rel.render(rows))
    assert str(rel.RUN_RESULTS) in page


def _faults_tree(root: Path) -> None:
    (root / "tests" / "faults").mkdir(parents=True)
    for name in ("test_a.py", "test_b.py"):
        (root / "tests" / "faults" / name).write_text("")


def test_publish_merges_the_run_into_the_published_rows_and_writes_the_page(tmp_path: Path) -> None:
    _faults_tree(tmp_path)
    a, b, gone = "tests/faults/test_a.py::t", "tests/faults/test_b.py::t", "tests/faults/test_gone.py::t"
    rel.save_rows(
        tmp_path / rel.PUBLISHED,
        {
            a: _row(a, rel.FAILED, when="2026-11-01"),
            b: _row(b, details=["kept"], when="2026-11-01"),
            gone: _row(gone, when="2026-11-01"),
        },
    )
    rel.save_rows(tmp_path / rel.RUN_RESULTS, {a: _row(a, details=["12 kills"], when="2026-11-02")})
    soaks = tmp_path / rel.SOAK_RESULTS
    soaks.mkdir(parents=True)
    (soaks / "soak-x.json").write_text(
        json.dumps({"reliability": {"fault": "soak f", "checked": "c", "outcome": "passed", "when": "d"}})
    )

    doc, rows = rel.publish(tmp_path)

    assert doc == tmp_path / "docs" / "reliability.md"
    assert {r.id for r in rows} == {a, b, "bench:soak-x"}  # the deleted test's row is gone
    published = rel.load_rows(tmp_path / rel.PUBLISHED)
    assert published[a].outcome == rel.PASSED and published[a].details == ["12 kills"]
    assert published[b].details == ["kept"]  # not in the partial run: kept as published
    text = doc.read_text()
    assert text == rel.render_page(published.values())
    table = text[text.index("| Fault |") :].splitlines()
    assert table[2].startswith(f"| fault {a} |") and "✅ pass" in table[2] and "12 kills" in table[2]
    assert table[3].startswith(f"| fault {b} |") and "kept" in table[3]
    assert "soak f" in table[4] and "long soak in bench, last run d" in table[4]
    assert len(table) == 5


def test_publish_without_a_run_renders_the_published_rows(tmp_path: Path) -> None:
    _faults_tree(tmp_path)
    a = "tests/faults/test_a.py::t"
    rel.save_rows(tmp_path / rel.PUBLISHED, {a: _row(a, when="2026-11-01")})
    before = (tmp_path / rel.PUBLISHED).read_text()
    doc, rows = rel.publish(tmp_path)
    assert [r.id for r in rows] == [a]
    assert (tmp_path / rel.PUBLISHED).read_text() == before
    assert f"| fault {a} | checked {a} | ✅ pass | — |" in doc.read_text()


def test_the_published_page_is_what_the_published_rows_render() -> None:
    """docs/reliability.md in the tree is current: re-rendering the tracked rows gives it back."""
    root = Path(__file__).resolve().parents[2]
    rows = rel.load_rows(root / rel.PUBLISHED)
    assert rows, "tests/faults/reliability.json has the published rows"
    assert (root / rel.DOC).read_text() == rel.render_page(rows.values())
