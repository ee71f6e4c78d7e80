"""warmlet bench: scenario discovery, run order, argument pass-through, command stamping."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

from bench import cli, scenarios
from bench.harness import command_line


def test_discover_reads_scenario_line_without_importing(tmp_path: Path) -> None:
    (tmp_path / "alpha.py").write_text('SCENARIO = "alpha-one"\nraise SystemExit("never imported")\n')
    (tmp_path / "typed.py").write_text('SCENARIO: str = "typed"\n')
    (tmp_path / "helper.py").write_text("X = 1\n")
    (tmp_path / "harness.py").write_text('SCENARIO = "not-a-scenario"\n')
    (tmp_path / "_private.py").write_text('SCENARIO = "private"\n')
    assert scenarios.discover(tmp_path) == {"alpha-one": "bench.alpha", "typed": "bench.typed"}


def test_discover_finds_repo_scenarios() -> None:
    found = scenarios.discover()
    assert found["cold-vs-warm"] == "bench.cold_vs_warm"
    assert found["burst-sim"] == "bench.burst_sim"
    assert found["kubelet-api"] == "bench.kubelet_api_bench"


def test_repo_scenarios_follow_the_interface() -> None:
    for name in ("cold-vs-warm", "burst-sim", "kubelet-api"):
        mod = scenarios.load(scenarios.discover()[name])
        assert name == mod.SCENARIO
        scenarios.scenario_parser(mod).parse_args([])  # common + scenario options coexist


def test_ordered_puts_known_scenarios_first() -> None:
    assert scenarios.ordered(["zeta", "kubelet-api", "cold-vs-warm", "alpha"]) == [
        "cold-vs-warm",
        "kubelet-api",
        "alpha",
        "zeta",
    ]


def test_scenario_parser_tolerates_a_scenario_redeclaring_kubeconfig() -> None:
    class Mod:
        SCENARIO = "x"
        __doc__ = "x"

        @staticmethod
        def add_arguments(p: argparse.ArgumentParser) -> None:
            p.add_argument("--kubeconfig", default="mine")
            p.add_argument("-n", type=int, default=3)

    ns = scenarios.scenario_parser(Mod).parse_args(["-n", "7"])  # type: ignore[arg-type]
    assert ns.n == 7 and ns.kubeconfig == "mine"


def test_warmlet_cli_passes_scenario_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from provider import cli as pcli

    seen: dict[str, object] = {}

    async def fake_run(
        names: list[str], modules: object, quick: bool, extra: list[str], console: object
    ) -> dict[str, str]:
        seen.update(scenarios=names, quick=quick, extra=extra)
        return {n: "ok" for n in names}

    monkeypatch.setattr(cli, "run_scenarios", fake_run)
    assert pcli.main(["bench", "cold-vs-warm", "--quick", "-n", "5"]) == 0
    assert seen == {"scenarios": ["cold-vs-warm"], "quick": True, "extra": ["-n", "5"]}
    with pytest.raises(SystemExit):
        pcli.main(["version", "--bogus"])


def test_bench_options_and_passthrough() -> None:
    ns, extra = cli.bench_parser().parse_known_args(["a", "b", "--all", "--timeout", "3", "--report"])
    assert ns.scenarios == ["a", "b"] and ns.all and ns.report and extra == ["--timeout", "3"]


def test_bench_report_writes_both_documents(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import report

    monkeypatch.setattr(report, "write_reports", lambda: ["wrote R", "wrote D"])
    assert cli.main(["--report"]) == 0
    assert capsys.readouterr().out.splitlines() == ["wrote R", "wrote D"]


def test_bench_help_lists_options_and_scenarios(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: warmlet bench" in out and "--report" in out and "cold-vs-warm" in out


def test_command_line_quotes() -> None:
    assert (
        command_line("cold-vs-warm", True, ["--image", "a b"])
        == "warmlet bench cold-vs-warm --quick --image 'a b'"
    )


def test_record_command_stamps_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "RESULTS_DIR", tmp_path)
    (tmp_path / "s.json").write_text(json.dumps({"scenario": "s", "p50_ms": 1}))
    cli._record_command("s", "warmlet bench s", 0.0)
    assert json.loads((tmp_path / "s.json").read_text())["command"] == "warmlet bench s"
    cli._record_command("missing", "x", 0.0)  # no result file: nothing to do
    # a run that wrote its result elsewhere (--out-dir) leaves the published one as it was
    cli._record_command("s", "warmlet bench s --out-dir x", time.time() + 60)
    assert json.loads((tmp_path / "s.json").read_text())["command"] == "warmlet bench s"


def test_render_table_rows() -> None:
    from rich.console import Console

    console = Console(width=80, record=True)
    console.print(cli.render_table("demo", [("p50 (ms)", "12")], "3 s"))
    text = console.export_text()
    assert "demo - 3 s" in text and "p50 (ms)" in text and "12" in text
