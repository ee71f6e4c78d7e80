"""CLI flags override the config file; the in-cluster IP comes from the environment."""

from __future__ import annotations

import argparse
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
