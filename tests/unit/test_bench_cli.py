"""warmlet bench: scenario discovery, run order, argument pass-through, command stamping."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench import cli
from bench.harness import command_line


def test_discover_reads_scenario_line_without_importing(tmp_path: Path) -> None:
    (tmp_path / "alpha.py").write_text('SCENARIO = "alpha-one"\nraise SystemExit("never imported")\n')
    (tmp_path / "typed.py").write_text('SCENARIO: str = "typed"\n')
    (tmp_path / "helper.py").write_text("X = 1\n")
    (tmp_path / "harness.py").write_text('SCENARIO = "not-a-scenario"\n')
    (tmp_path / "_private.py").write_text('SCENARIO = "private"\n')
    assert cli.discover(tmp_path) == {"alpha-one": "bench.alpha", "typed": "bench.typed"}


def test_discover_finds_repo_scenarios() -> None:
    found = cli.discover()
    assert found["cold-vs-warm"] == "bench.cold_vs_warm"
    assert found["burst-sim"] == "bench.burst_sim"
    assert found["kubelet-api"] == "bench.kubelet_api_bench"


def test_repo_scenarios_follow_the_interface() -> None:
    for name in ("cold-vs-warm", "burst-sim", "kubelet-api"):
        mod = cli.load(cli.discover()[name])
        assert name == mod.SCENARIO
        cli.scenario_parser(mod).parse_args([])  # common + scenario options coexist


def test_ordered_puts_known_scenarios_first() -> None:
    assert cli.ordered(["zeta", "kubelet-api", "cold-vs-warm", "alpha"]) == [
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

    ns = cli.scenario_parser(Mod).parse_args(["-n", "7"])  # type: ignore[arg-type]
    assert ns.n == 7 and ns.kubeconfig == "mine"


def test_warmlet_cli_passes_scenario_options_through(monkeypatch: pytest.MonkeyPatch) -> None:
    from provider import cli as pcli

    seen: dict[str, object] = {}

    def fake_main(ns: argparse.Namespace, extra: list[str]) -> int:
        seen.update(scenarios=ns.scenarios, quick=ns.quick, extra=extra)
        return 0

    monkeypatch.setattr(cli, "main", fake_main)
    assert pcli.main(["bench", "cold-vs-warm", "--quick", "-n", "5"]) == 0
    assert seen == {"scenarios": ["cold-vs-warm"], "quick": True, "extra": ["-n", "5"]}
    with pytest.raises(SystemExit):
        pcli.main(["version", "--bogus"])


def test_command_line_quotes() -> None:
    assert (
        command_line("cold-vs-warm", True, ["--image", "a b"])
        == "warmlet bench cold-vs-warm --quick --image 'a b'"
    )


def test_record_command_stamps_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "RESULTS_DIR", tmp_path)
    (tmp_path / "s.json").write_text(json.dumps({"scenario": "s", "p50_ms": 1}))
    cli._record_command("s", "warmlet bench s")
    assert json.loads((tmp_path / "s.json").read_text())["command"] == "warmlet bench s"
    cli._record_command("missing", "x")  # no result file: nothing to do


def test_render_table_rows() -> None:
    from rich.console import Console

    console = Console(width=80, record=True)
    console.print(cli.render_table("demo", [("p50 (ms)", "12")], "3 s"))
    text = console.export_text()
    assert "demo - 3 s" in text and "p50 (ms)" in text and "12" in text
