"""CLI: ``python -m testbed up|down|status|env`` — a test bed that outlives the command.

``up`` builds what is missing in the foreground (so progress is visible), then starts a
detached supervisor process that owns the bed (slot 0) and publishes
``$WARMLET_CACHE/testbed/env`` once ready; ``down`` asks the supervisor to stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed.bed import CLI_SLOT, TestBed, TestBedInfo, ensure_cluster_bins, info_dir
from testbed.images import build_all
from testbed.util import https_get, kv, tail

log = logging.getLogger("testbed.cli")


def _supervisor_pid() -> int | None:
    try:
        pid = int((info_dir() / "supervisor.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


HEARTBEAT_SECONDS = float(os.environ.get("WARMLET_HEARTBEAT_SECONDS", "20"))


def _last_line(path: Path) -> str:
    """The last non-empty line of a log, at most 160 characters (for the waiting heartbeat)."""
    lines = [ln for ln in tail(path, 5).splitlines() if ln.strip()]
    return lines[-1][:160] if lines else ""


def _healthy(info: TestBedInfo) -> bool:
    try:
        code, _body = https_get(f"{info.apiserver_url}/readyz", Path(info.ca_cert), timeout=2)
        return code in (200, 401, 403)
    except Exception:
        return False


def cmd_up(args: argparse.Namespace) -> int:
    """Start the background bed (no-op when one is already running)."""
    d = info_dir()
    if _supervisor_pid():
        print(f"test bed already running; source {d / 'env'}")
        return 0
    ensure_cluster_bins()
    build_all(args.fat_mb)
    d.mkdir(parents=True, exist_ok=True)
    for f in ("testbed.json", "env", "ready"):
        (d / f).unlink(missing_ok=True)
    logf = d / "supervisor.log"
    with open(logf, "w") as out:
        p = subprocess.Popen(
            [sys.executable, "-m", "testbed", "_serve", "--fat-mb", str(args.fat_mb)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (d / "supervisor.pid").write_text(str(p.pid))
    print(
        "starting etcd, kube-apiserver, kube-scheduler, kube-controller-manager, containerd and the "
        f"registry in the background (about 10-30 s); log: {logf}",
        flush=True,
    )
    t0 = time.monotonic()
    next_beat = t0 + HEARTBEAT_SECONDS
    while not (d / "ready").exists():
        if time.monotonic() >= next_beat:
            elapsed = time.monotonic() - t0
            print(f"    ... {elapsed:.0f}s elapsed; last log line: {_last_line(logf)}", flush=True)
            next_beat += HEARTBEAT_SECONDS
        if p.poll() is not None:
            print(
                f"test bed failed to start (rc={p.returncode}); last lines of {logf}:\n{tail(logf)}",
                file=sys.stderr,
            )
            return 1
        if time.monotonic() - t0 > args.timeout:
            print(f"test bed not ready after {args.timeout}s; see {logf}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    info = TestBedInfo.load()
    print(
        f"test bed up in {time.monotonic() - t0:.1f}s: apiserver {info.apiserver_url}, "
        f"containerd {info.containerd_socket}, registry {info.registry}"
    )
    print(f"use it:  source {d / 'env'}   (KUBECONFIG, WARMLET_* variables; kubectl on PATH)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The supervisor: own the bed until SIGTERM/SIGINT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")

    def _term(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    signal.signal(signal.SIGHUP, _term)
    d = info_dir()
    bed = TestBed(slot=CLI_SLOT, fat_mb=args.fat_mb)
    try:
        bed.start()
        bed.info().write(d)
        (d / "ready").write_text(str(bed.startup_seconds))
        while True:
            time.sleep(3600)
    finally:
        for f in ("ready", "env", "testbed.json", "supervisor.pid"):
            (d / f).unlink(missing_ok=True)
        bed.stop()
        log.info(kv("supervisor exit"))


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the background bed and wait until it is gone."""
    pid = _supervisor_pid()
    if pid is None:
        print("test bed not running")
        return 0
    os.kill(pid, signal.SIGTERM)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        try:
            os.kill(pid, 0)
        except OSError:
            print("test bed stopped")
            return 0
        time.sleep(0.2)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    print("test bed supervisor killed after 60s", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    """Print the bed's description and whether the apiserver answers; rc 1 when down."""
    pid = _supervisor_pid()
    if pid is None or not (info_dir() / "ready").exists():
        print("test bed: down" if pid is None else "test bed: starting")
        return 1
    info = TestBedInfo.load()
    ok = _healthy(info)
    print(json.dumps({"running": True, "apiserver_ok": ok, "supervisor_pid": pid, **info.__dict__}, indent=1))
    return 0 if ok else 1


def cmd_env(args: argparse.Namespace) -> int:
    """Print the env file (``eval "$(python -m testbed env)"``)."""
    f = info_dir() / "env"
    if not f.exists():
        print("test bed not running (python -m testbed up)", file=sys.stderr)
        return 1
    sys.stdout.write(f.read_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m testbed``."""
    ap = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start the test bed in the background")
    up.add_argument("--fat-mb", type=int, default=int(os.environ.get("WARMLET_FAT_MB", "100")))
    up.add_argument("--timeout", type=float, default=300)
    up.set_defaults(fn=cmd_up)
    serve = sub.add_parser("_serve", help=argparse.SUPPRESS)
    serve.add_argument("--fat-mb", type=int, default=100)
    serve.set_defaults(fn=cmd_serve)
    sub.add_parser("down", help="stop it").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="is it up?").set_defaults(fn=cmd_status)
    sub.add_parser("env", help="print its environment").set_defaults(fn=cmd_env)
    args = ap.parse_args(argv)
    if args.cmd != "_serve":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
