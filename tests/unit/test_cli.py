"""CLI flags override the config file; the in-cluster IP comes from the environment."""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import pytest

from provider import cli
from provider.config import WarmletConfig


def _run_ns(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli._run_parser(sub)
    return parser.parse_args(["run", *argv])


def test_flags_override_config() -> None:
    argv = ["--node-name", "n1", "--backend", "cri", "--port", "0"]
    ns = _run_ns([*argv, "--state-dir", "/tmp/wl", "--log-format", "json"])
    cfg = cli.apply_run_flags(WarmletConfig(), ns)
    assert cfg.node.name == "n1"
    assert cfg.backend == "cri"
    assert cfg.server.port == 0
    assert cfg.pods.volumes_dir == Path("/tmp/wl/pods")
    assert cfg.server.cert_dir == Path("/tmp/wl/pki")
    assert cfg.log_format == "json"


def test_internal_ip_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARMLET_INTERNAL_IP", "10.244.1.7")
    cfg = cli.apply_run_flags(WarmletConfig(), _run_ns([]))
    assert cfg.node.internal_ip == "10.244.1.7"


def test_version_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert "warmlet" in capsys.readouterr().out


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(SystemExit):
        _run_ns(["--backend", "docker"])


def test_help_lists_the_lazy_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("version", "run", "placement", "demo", "bench"):
        assert name in out
    assert "start latencies" in out and "benchmark scenarios" in out


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_lazy_subcommands_get_their_own_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        rc = cli.main([command, "--help"])
    except SystemExit as e:  # argparse's own --help exits 0
        rc = int(e.code or 0)
    assert rc == 0
    assert f"usage: warmlet {command}" in capsys.readouterr().out


def test_lazy_subcommand_gets_the_rest_of_the_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("fake_demo")
    fake.main = lambda argv: seen.append(argv) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(cli.EXTERNAL_COMMANDS, "demo", ("fake_demo", "help"))
    monkeypatch.setitem(sys.modules, "fake_demo", fake)
    assert cli.main(["demo", "--n", "3", "x"]) == 3
    assert seen == [["--n", "3", "x"]]
