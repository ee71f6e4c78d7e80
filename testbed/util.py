"""Shared plumbing for the test bed: paths, ports, processes that never outlive us, waits.

Every long-running service of the test bed is started through :class:`ProcessSet` so that a
crashed or interrupted test run never leaves etcd, an apiserver or containerd running:
children get their own session (we kill the whole group), die with their parent thread
(``PR_SET_PDEATHSIG``) when spawned from the main thread, are killed by an ``atexit`` hook,
and are recorded in a pid file so the next start of the same slot kills stale ones.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("testbed")

K8S_VERSION = os.environ.get("WARMLET_K8S_VERSION", "v1.36.3")
REPO_ROOT = Path(__file__).resolve().parent.parent


def kv(event: str, **fields: object) -> str:
    """Format a structured log line ``event k=v ...`` (grep-friendly, no JSON noise)."""
    parts = [event]
    for k, v in fields.items():
        s = str(v)
        if not s or any(c in s for c in ' \t"='):
            s = json.dumps(s)
        parts.append(f"{k}={s}")
    return " ".join(parts)


def cache_dir() -> Path:
    """Where slow-to-make artefacts live across runs (binaries, images, certs of the CLI bed)."""
    return Path(os.environ.get("WARMLET_CACHE", str(Path.home() / ".cache" / "warmlet")))


def bin_dir() -> Path:
    """The cached Kubernetes binaries of the pinned release (built by scripts/build-cluster-bins.sh)."""
    return cache_dir() / f"k8s-{K8S_VERSION}" / "bin"


def state_root() -> Path:
    """Root of per-slot runtime state; on local disk because containerd needs overlayfs there."""
    return Path(os.environ.get("WARMLET_TESTBED_ROOT", "/var/lib/warmlet-testbed"))


def free_port(preferred: int | None = None) -> int:
    """A loopback TCP port that is free now (``preferred`` if it is)."""
    if preferred is not None:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, n: int = 40) -> str:
    """The last ``n`` lines of a log file, for error messages that explain themselves."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"<no log at {path}>"
    return "\n".join(lines[-n:])


class StartupError(RuntimeError):
    """A bed component could not be set up (waiting for one: :mod:`testbed.wait`)."""


def https_get(
    url: str,
    ca: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """GET over TLS with optional client cert; returns (status, body) even for HTTP errors."""
    ctx = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """Plain HTTP GET (registry, etcd health) returning (status, body)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


# --------------------------------------------------------------------------- processes

_PR_SET_PDEATHSIG = 1
_live: set[subprocess.Popen[bytes]] = set()
_live_lock = threading.Lock()


def _pdeathsig() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: tells a recycled pid from the process we recorded."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def kill_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left after ``grace``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _atexit_kill() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 3
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)


atexit.register(_atexit_kill)


class ProcessSet:
    """The long-running processes of one slot, recorded in ``pids.json`` for stale cleanup."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.pidfile = state_dir / "pids.json"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in its own session, output to ``logs/NAME.log``."""
        logdir = self.state_dir / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        log_path = logdir / f"{name}.log"
        in_main = threading.current_thread() is threading.main_thread()
        with open(log_path, "ab") as out:
            p = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
                cwd=str(cwd) if cwd else None,
                # the death signal follows the spawning *thread*: only safe from the main thread
                preexec_fn=_pdeathsig if in_main else None,
            )
        with _live_lock:
            _live.add(p)
        self.procs[name] = p
        self.logs[name] = log_path
        self._record()
        log.info(kv("spawned", name=name, pid=p.pid, log=log_path))
        return p

    def alive(self, name: str) -> Callable[[], bool]:
        """A liveness probe for :func:`testbed.wait.wait_until`."""
        return lambda: self.procs[name].poll() is None

    def _record(self) -> None:
        data = {
            n: {"pid": p.pid, "start": _proc_start_time(p.pid), "argv0": str(p.args[0])}  # type: ignore[index]
            for n, p in self.procs.items()
        }
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.pidfile)

    def stop(self, names: Iterable[str] | None = None, grace: float = 5.0) -> None:
        """Stop the given (default: all, newest first) processes: TERM, wait, KILL."""
        order = list(names) if names is not None else list(reversed(self.procs))
        stopped = False
        for n in order:
            p = self.procs.pop(n, None)
            if p is None:
                continue
            kill_group(p.pid, grace)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(2)
            with _live_lock:
                _live.discard(p)
            log.info(kv("stopped", name=n, pid=p.pid, rc=p.returncode))
            stopped = True
        if stopped and self.state_dir.exists():
            self._record()

    @staticmethod
    def kill_stale(state_dir: Path) -> int:
        """Kill the process groups a previous run of this slot recorded and left behind."""
        pidfile = state_dir / "pids.json"
        try:
            data: dict[str, Any] = json.loads(pidfile.read_text())
        except (OSError, ValueError):
            return 0
        n = 0
        for name, rec in data.items():
            pid = int(rec["pid"])
            if rec.get("start") and _proc_start_time(pid) == rec["start"]:
                log.warning(kv("killing stale process", name=name, pid=pid))
                kill_group(pid, 2.0)
                n += 1
        return n


def run(argv: Sequence[str], timeout: float = 300, check: bool = True, **kw: Any) -> str:
    """Run a short command, return stdout; on failure raise with its output."""
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )
    return r.stdout


def processes_matching(pred: Callable[[list[str]], bool]) -> list[int]:
    """Pids whose command line satisfies ``pred`` (e.g. containerd shims of our socket)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv if a]
        if args and pred(args):
            out.append(int(d.name))
    return out


def descendants(root: int) -> list[int]:
    """All descendant pids of ``root`` (children first-level-first), from /proc ppid links."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    out: list[int] = []
    todo = [root]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def unmount_under(path: Path) -> None:
    """Lazily unmount everything mounted below ``path`` (leftover overlay/shm/netns mounts)."""
    prefix = str(path.resolve()) + "/"
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp.startswith(prefix):
                mounts.append(mp)
    for mp in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], capture_output=True)
