"""A byte relay between warmlet and the CRI socket that outlives a killed warmlet.

Why: containerd cancels the work of a CRI call whose connection closes. A warmlet SIGKILLed in
the middle of StartContainer therefore leaves a task that was created and perhaps started, then
torn down with ``StartError: context canceled`` — the process may have run, so the pod can be
neither reported as run nor run again (exactly-once is lost). Through this relay the connection
to containerd stays open after warmlet dies: every call in flight finishes in the runtime, and
the restarted warmlet finds its outcome (a running or exited container, a ready sandbox).

The relay is not gRPC-aware: it copies bytes both ways. When warmlet's side of a connection
closes, the relay stops writing upstream and keeps reading (discarding) what the runtime answers
for ``linger`` seconds — longer than any call's deadline — then closes. It runs in its own
session so a signal to warmlet's process group does not reach it, and exits once its parent is
gone and its last connection has lingered out; on a clean shutdown warmlet terminates it.

Run as ``python -m sandbox.cri.relay --listen NAME --upstream PATH --parent PID``; ``NAME`` is an
abstract unix socket name (no file to clean up, no path length limit). An abstract socket has no
file permissions, so the relay checks each peer's credentials (SO_PEERCRED) and serves only its
own user — the one that may open the runtime's socket anyway; anyone else is closed at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sandbox.cri.h2_streams import StreamTracker

CHUNK = 256 * 1024
DEFAULT_LINGER_SECONDS = 150.0  # > the longest CRI call deadline warmlet uses (RunPodSandbox, 120 s)
RELAY_FILE = "cri-relay.json"  # in warmlet's state dir: pid + name of the running warmlet's relay

log = logging.getLogger("warmlet.cri")


class Relay:
    """Accept on an abstract unix socket; relay each connection to ``upstream``."""

    def __init__(self, listen: str, upstream: str, linger: float, parent: int) -> None:
        self.listen = listen
        self.upstream = upstream
        self.linger = linger
        self.parent = parent
        self.connections: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()

    async def run(self) -> None:
        server = await asyncio.start_unix_server(self._accept, path="\0" + self.listen)
        self.listening.set()
        await _exited(self.parent)
        server.close()  # the parent is gone: no new connections, let the open ones finish
        if self.connections:
            await asyncio.gather(*self.connections, return_exceptions=True)

    async def _accept(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(task)
        try:
            await self._relay(down_r, down_w)
        except asyncio.CancelledError:
            pass  # the relay stops (SIGTERM): end quietly (3.11's stream callback logs a cancel)
        finally:
            self.connections.discard(task)

    async def _relay(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        if peer_uid(down_w.get_extra_info("socket")) != os.getuid():
            down_w.close()  # not the runtime socket's owner: no CRI access through the relay
            return
        try:
            up_r, up_w = await asyncio.open_unix_connection(self.upstream)
        except OSError:
            down_w.close()  # the runtime is down: warmlet sees its call fail as UNAVAILABLE
            return
        down_open = True
        sent = False
        streams = StreamTracker()
        answered = asyncio.Event()  # no call waits for an answer (set while none is open)

        async def to_upstream() -> None:
            nonlocal sent
            while data := await down_r.read(CHUNK):
                sent = True
                streams.from_client(data)
                if streams.open:
                    answered.clear()
                up_w.write(data)
                await up_w.drain()

        async def to_downstream() -> None:
            nonlocal down_open
            while data := await up_r.read(CHUNK):
                streams.from_server(data)
                if not streams.open:
                    answered.set()
                if not down_open:
                    continue  # warmlet is gone: read the runtime's answers, drop them
                try:
                    down_w.write(data)
                    await down_w.drain()
                except (ConnectionError, OSError):
                    down_open = False

        answers = asyncio.create_task(to_downstream())
        requests = asyncio.create_task(to_upstream())
        try:
            done, _ = await asyncio.wait({answers, requests}, return_when=asyncio.FIRST_COMPLETED)
            if answers in done:
                return  # the runtime closed the connection: nothing is left to finish
            down_open = False  # warmlet closed (or died): calls in flight finish in the runtime
            streams.client_gone()
            if not sent or (streams.valid and not streams.open):
                return  # nothing in flight
            # until the last call in flight is answered (or, not knowing, the runtime hangs up)
            all_answered = asyncio.ensure_future(answered.wait())
            waits: set[asyncio.Future[Any]] = {answers, all_answered} if streams.valid else {answers}
            try:
                await asyncio.wait(waits, timeout=self.linger, return_when=asyncio.FIRST_COMPLETED)
            finally:
                all_answered.cancel()
        except (ConnectionError, OSError):
            pass
        finally:
            for t in (answers, requests):
                t.cancel()
            await asyncio.gather(answers, requests, return_exceptions=True)
            for w in (up_w, down_w):
                w.close()


def peer_uid(sock: socket.socket | None) -> int:
    """The uid of a unix socket's peer (-1 if unknown)."""
    if sock is None:
        return -1
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return -1
    return int(struct.unpack("3i", raw)[1])


async def _exited(pid: int) -> None:
    """Return when process ``pid`` has exited (its pidfd becomes readable)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, gone.set)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(fd)
        os.close(fd)


# ------------------------------------------------------------------------------ warmlet's side


class RelayProcess:
    """The relay as warmlet starts and stops it."""

    def __init__(self, upstream: str, linger: float = DEFAULT_LINGER_SECONDS) -> None:
        self.upstream = upstream
        self.linger = linger
        self.name = f"warmlet-cri-relay-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        """The gRPC target that dials the relay."""
        return f"unix-abstract:{self.name}"

    def start(self, ready_timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sandbox.cri.relay",
                "--listen",
                self.name,
                "--upstream",
                self.upstream,
                "--linger",
                str(self.linger),
                "--parent",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # a signal to warmlet's process group does not reach it
        )
        deadline = time.monotonic() + ready_timeout
        while True:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect("\0" + self.name)
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"CRI relay exited with code {self.proc.returncode} at start")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"CRI relay not listening after {ready_timeout:.0f} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Clean shutdown: nothing is in flight, so the relay need not linger."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def relay_alive(pid: int, name: str) -> bool:
    """Whether process ``pid`` is still the relay listening on ``name`` (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return name.encode() in f.read().split(b"\0")
    except OSError:
        return False


async def wait_for_relay_exit(pid: int, name: str, within: float) -> float | None:
    """Wait until a previous warmlet's relay exited (its calls in flight answered); the seconds
    waited, or None if it was not running."""
    if not await asyncio.to_thread(relay_alive, pid, name):
        return None
    t0 = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_exited(pid), within)
    return time.monotonic() - t0


def upstream_path(endpoint: str) -> str:
    """The socket path of a ``unix://`` (or bare path) CRI endpoint."""
    if endpoint.startswith("unix://"):
        return endpoint[len("unix://") :]
    if endpoint.startswith("unix:"):
        return endpoint[len("unix:") :]
    return endpoint


async def start_relay(state_dir: Path, runtime_endpoint: str) -> RelayProcess:
    """Start this warmlet's relay — after the previous warmlet's relay (a killed one's, still
    finishing its calls in flight, recorded in ``state_dir``) has exited: adopting the runtime's
    state while those calls still change it (a sandbox being stopped, a container being created)
    would build the pool on state that is about to change. Records the new relay."""
    marker = state_dir / RELAY_FILE
    try:
        prev = json.loads(marker.read_text())
        waited = await wait_for_relay_exit(int(prev["pid"]), str(prev["name"]), DEFAULT_LINGER_SECONDS + 10)
        if waited is not None:
            log.info("previous cri relay finished its calls pid=%s seconds=%.1f", prev["pid"], waited)
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no previous relay recorded (first start, or it was stopped cleanly)
    relay = RelayProcess(upstream_path(runtime_endpoint))
    await asyncio.to_thread(relay.start)
    assert relay.proc is not None
    marker.write_text(json.dumps({"pid": relay.proc.pid, "name": relay.name}))
    log.info("cri relay started name=%s pid=%d", relay.name, relay.proc.pid)
    return relay


async def stop_relay(relay: RelayProcess, state_dir: Path) -> None:
    """Clean stop: end the relay and its record (the next warmlet has nothing to wait for)."""
    await asyncio.to_thread(relay.stop)
    with contextlib.suppress(OSError):
        (state_dir / RELAY_FILE).unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="abstract unix socket name")
    ap.add_argument("--upstream", required=True, help="the runtime's unix socket path")
    ap.add_argument("--linger", type=float, default=DEFAULT_LINGER_SECONDS)
    ap.add_argument("--parent", type=int, default=os.getppid())
    args = ap.parse_args(argv)
    relay = Relay(args.listen, args.upstream, args.linger, args.parent)
    loop = asyncio.new_event_loop()
    main_task = loop.create_task(relay.run())
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    loop.add_signal_handler(signal.SIGINT, main_task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(main_task)
    loop.run_until_complete(_end_connections())
    loop.close()
    return 0


async def _end_connections() -> None:
    """Stopped by a signal: end the open connections too (their tasks close both sockets)."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    sys.exit(main())
