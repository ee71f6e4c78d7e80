"""bench/RESULTS.md generation from sample result JSON."""

from __future__ import annotations

import json
from pathlib import Path

from bench import report

SAMPLE = {
    "scenario": "cold-vs-warm",
    "machine": {"cores": 2, "memory_gb": 23.5, "kernel": "6.1", "python": "3.11.7"},
    "measured_at": "2026-11-23T10:38:52Z",
    "command": "warmlet bench cold-vs-warm",
    "n": 50,
    "levels": {"warm": {"n": 50, "p50_ms": 117.0, "p95_ms": 155.0, "p99_ms": 387.0}},
}


def test_render_report_sections_plots_command_machine() -> None:
    other = {"scenario": "aaa", "x": 1.5, "measured_at": "t"}
    text = report.render_report(
        [other, SAMPLE],
        lambda r: [("rows of", r["scenario"])],
        {"cold-vs-warm": "results/cold-vs-warm.png"},
        order=["cold-vs-warm"],
    )
    assert text.index("## cold-vs-warm") < text.index("## aaa")  # preferred order first
    assert "![cold-vs-warm](results/cold-vs-warm.png)" in text
    assert "- command: `warmlet bench cold-vs-warm`" in text
    assert "- machine: 2 cores, 23.5 GB RAM, Linux 6.1, Python 3.11.7" in text
    assert "| rows of | cold-vs-warm |" in text
    assert "- command: `warmlet bench aaa`" in text  # default command when none was recorded
    assert "do not edit by hand" in text


def test_render_report_empty() -> None:
    assert "No results yet" in report.render_report([], lambda r: [], {})


def test_generic_rows_keeps_scalars() -> None:
    rows = report.generic_rows({"scenario": "s", "machine": {}, "n": 1000, "p50_ms": 1.234, "detail": {}})
    assert rows == [("n", "1,000"), ("p50_ms", "1.23")]


def test_write_report_from_files(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "cold-vs-warm.json").write_text(json.dumps(SAMPLE))
    (results / "cold-vs-warm.png").write_bytes(b"png")
    (results / "broken.json").write_text("{not json")
    (results / "custom.json").write_text(json.dumps({"scenario": "custom", "total_s": 2.0}))
    out = report.write_report(results, tmp_path / "RESULTS.md")
    text = out.read_text()
    assert "## cold-vs-warm" in text and "## custom" in text and "broken" not in text
    assert "![cold-vs-warm](results/cold-vs-warm.png)" in text
    # cold-vs-warm's own summary_rows formats the levels
    assert "warm (n=50) p50/p95/p99 ms" in text
    assert "| total_s | 2.00 |" in text
