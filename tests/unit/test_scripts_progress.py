"""The README's scripts: every slow step shows progress, and the Go module proxy comes from GOPROXY.

The scripts themselves are never run here (they install and build); their sourced helpers are,
with fake slow commands.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


BASH = shutil.which("bash") or "/bin/bash"


def bash(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **env},
    )


def tools_dir(tmp: Path, fake_go: str | None = None) -> str:
    """A PATH with only the tools the helper needs (and, if given, a fake `go`)."""
    d = tmp / "bin"
    d.mkdir()
    for tool in ("cat",):
        (d / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    if fake_go is not None:
        go = d / "go"
        go.write_text(f"#!{BASH}\n[[ $* == 'env GOPROXY' ]] && echo '{fake_go}'\n")
        go.chmod(0o755)
    return str(d)


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.sh")), ids=lambda p: p.name)
def test_every_script_parses(path: Path) -> None:
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_slow_step_prints_what_how_long_log_and_heartbeats(tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    r = bash(
        f"source {SCRIPTS}/progress.sh; "
        f"run_logged 'building the fake thing' 'about 3 s' {log} "
        "bash -c 'echo compiling pkg/one; sleep 3.5; echo compiling pkg/two'",
        WARMLET_HEARTBEAT_SECONDS="1",
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "building the fake thing (about 3 s); log: " + str(log) in lines[0]
    beats = [ln for ln in lines if "elapsed; last log line: compiling pkg/one" in ln]
    assert len(beats) >= 2, r.stdout  # one per second for 3.5 s, with the log's last line
    assert all(re.search(r"building the fake thing: \d+s elapsed", b) for b in beats)
    assert re.search(r"done in \d+s: building the fake thing", lines[-1])
    assert log.read_text().splitlines() == ["compiling pkg/one", "compiling pkg/two"]


def test_quick_step_has_no_heartbeat(tmp_path: Path) -> None:
    r = bash(f"source {SCRIPTS}/progress.sh; run_logged quick 'a moment' {tmp_path}/q.log true")
    assert r.returncode == 0
    assert "elapsed" not in r.stdout


def test_failed_step_shows_its_log_tail_and_path_and_exit_code(tmp_path: Path) -> None:
    log = tmp_path / "sub" / "fail.log"
    r = bash(
        f"source {SCRIPTS}/progress.sh; "
        f"run_logged 'pip: installing' 'about 1 min' {log} bash -c 'echo boom: no such package >&2; exit 7'; "
        "echo rc=$?"
    )
    assert "rc=7" in r.stdout
    assert "boom: no such package" in r.stderr
    assert "FAILED (exit 7)" in r.stderr and f"full log: {log}" in r.stderr


def test_last_log_line_cuts_progress_bars(tmp_path: Path) -> None:
    log = tmp_path / "bar.log"
    log.write_text("first\n##   10.0%\r####   40.0%\r\n\n")
    r = bash(f"source {SCRIPTS}/progress.sh; last_log_line {log}")
    assert r.stdout.strip() == "####   40.0%"


@pytest.mark.parametrize(
    ("goproxy", "url"),
    [
        ("https://mirror.example/go,direct", "https://mirror.example/go"),
        ("direct,https://a.example/", "https://a.example"),
        ("off|https://a.example|https://b.example", "https://a.example"),
        ("https://a.example|direct", "https://a.example"),
        ("file:///srv/goproxy", "file:///srv/goproxy"),
        ("direct", None),
        ("off", None),
        ("", None),
    ],
)
def test_first_proxy_url_of_a_goproxy_list(goproxy: str, url: str | None) -> None:
    r = bash(f"source {SCRIPTS}/goproxy.sh; first_proxy_url '{goproxy}'")
    if url is None:
        assert r.returncode == 1 and r.stdout == ""
    else:
        assert r.returncode == 0 and r.stdout == url + "\n"


RESOLVE = f'source {SCRIPTS}/goproxy.sh; resolve_module_proxy && echo "$PROXY|$PROXY_FROM"'


def test_proxy_comes_from_go_env_when_go_is_installed(tmp_path: Path) -> None:
    r = bash(RESOLVE, PATH=tools_dir(tmp_path, fake_go="off|https://fromgo.example/"))
    assert r.stdout.strip() == "https://fromgo.example|go env GOPROXY", r.stderr


def test_proxy_comes_from_goproxy_without_go_and_fails_clearly_without_one(tmp_path: Path) -> None:
    path = tools_dir(tmp_path)  # no go: only $GOPROXY (or $GOPROXY_URL) can name the proxy
    ok = bash(RESOLVE, PATH=path, GOPROXY="direct,https://mirror.example")
    assert ok.stdout.strip() == "https://mirror.example|$GOPROXY (no Go installed)"
    override = bash(RESOLVE, PATH=path, GOPROXY="off", GOPROXY_URL="https://other.example")
    assert override.stdout.strip() == "https://other.example|$GOPROXY_URL"
    none = bash(RESOLVE, PATH=path)
    assert none.returncode == 2 and none.stdout == ""
    assert "set GOPROXY" in none.stderr and "apt-get install golang-go" in none.stderr


def test_no_registry_host_written_in_the_scripts() -> None:
    text = "\n".join(p.read_text() for p in SCRIPTS.glob("*.sh"))
    assert not re.search(r"https?://(?!<)[a-z0-9.-]+\.[a-z]{2,}", text), "a host name in scripts/"
