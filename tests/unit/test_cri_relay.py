"""The CRI relay: calls in flight finish in the runtime when warmlet is SIGKILLed mid-call.

A fake RuntimeService (grpc.aio on a unix socket) takes a while to answer StartContainer and
records whether the call completed or was cancelled. A client process calls it and is killed
mid-call: directly, the runtime cancels the call (what containerd does, leaving StartError);
through the relay, the call completes. Plus the relay's own contract: bytes both ways, no
linger without a request, an unreachable runtime closes at once, exit after the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from fake_cri import serve_runtime

from proto import cri_pb2 as pb
from proto import cri_pb2_grpc as pbg
from sandbox.cri.client import CriClient
from sandbox.cri.relay import Relay, RelayProcess, upstream_path

START_SECONDS = 1.5


class SlowStart(pbg.RuntimeServiceServicer):
    def __init__(self) -> None:
        self.begun = asyncio.Event()
        self.outcome: dict[str, str] = {}
        self.finished = asyncio.Event()

    async def Version(
        self, request: pb.VersionRequest, context: grpc.aio.ServicerContext
    ) -> pb.VersionResponse:
        return pb.VersionResponse(runtime_name="slow", runtime_api_version="v1")

    async def StartContainer(
        self, request: pb.StartContainerRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartContainerResponse:
        self.begun.set()
        try:
            await asyncio.sleep(START_SECONDS)
        except asyncio.CancelledError:
            self.outcome[request.container_id] = "cancelled"
            self.finished.set()
            raise
        self.outcome[request.container_id] = "done"
        self.finished.set()
        return pb.StartContainerResponse()


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[SlowStart, str]]:
    fake = SlowStart()
    async with serve_runtime(fake, tmp_path / "cri.sock") as endpoint:
        yield fake, endpoint


CLIENT = textwrap.dedent(
    """
    import asyncio, sys
    from sandbox.cri.client import CriClient
    from sandbox.cri.relay import RelayProcess, upstream_path

    async def main(endpoint: str, relayed: bool) -> None:
        c = CriClient(endpoint, call_timeout=30)
        if relayed:
            relay = RelayProcess(upstream_path(endpoint), linger=60)
            relay.start()
            c.dial_through(relay.target)
            print("relay", relay.proc.pid, flush=True)
        print("calling", flush=True)
        await c.start_container("c1")
        print("answered", flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2] == "relay"))
    """
)


async def _kill_client_mid_start(fake: SlowStart, endpoint: str, relayed: bool) -> tuple[str, int]:
    """Run a client process, SIGKILL it while StartContainer runs; the call's outcome + relay pid."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, endpoint, "relay" if relayed else "direct", stdout=subprocess.PIPE
    )
    relay_pid = 0
    try:
        assert proc.stdout is not None
        while not fake.begun.is_set():
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if line.startswith(b"relay "):
                relay_pid = int(line.split()[1])
            if line.startswith(b"calling"):
                await asyncio.wait_for(fake.begun.wait(), 30)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await asyncio.wait_for(fake.finished.wait(), 30)
        return fake.outcome["c1"], relay_pid
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_killed_callers_call_is_cancelled_without_the_relay(runtime: tuple[SlowStart, str]) -> None:
    fake, endpoint = runtime
    outcome, _ = await _kill_client_mid_start(fake, endpoint, relayed=False)
    assert outcome == "cancelled"


async def test_through_the_relay_a_killed_callers_call_completes(runtime: tuple[SlowStart, str]) -> None:
    fake, endpoint = runtime
    outcome, relay_pid = await _kill_client_mid_start(fake, endpoint, relayed=True)
    assert outcome == "done"
    assert relay_pid
    # its parent gone and the last call answered, the relay exits by itself: at once (it reads
    # the HTTP/2 frames), not after its 60 s linger
    for _ in range(300):
        try:
            os.kill(relay_pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the relay outlived its parent and its last connection")


async def test_cri_client_through_a_relay_process(runtime: tuple[SlowStart, str]) -> None:
    fake, endpoint = runtime
    relay = RelayProcess(upstream_path(endpoint))
    relay.start()
    c = CriClient(endpoint)
    try:
        c.dial_through(relay.target)
        assert (await c.version()).runtime_name == "slow"
        await c.start_container("c2")
        assert fake.outcome["c2"] == "done"
    finally:
        await c.close()
        relay.stop()
    assert relay.proc is None


# ------------------------------------------------------------------------ the relay in-process


async def _upstream(path: Path, answer_after: float = 0.0) -> tuple[asyncio.AbstractServer, list[str]]:
    """A line server: answers each line upper-cased; records what it saw, in order."""
    seen: list[str] = []

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while line := await r.readline():
            seen.append("got " + line.decode().strip())
            await asyncio.sleep(answer_after)
            w.write(line.upper())
            await w.drain()
            seen.append("answered")
        seen.append("eof")
        w.close()

    return await asyncio.start_unix_server(handle, path=str(path)), seen


async def _relay(upstream: Path, linger: float, parent: int) -> tuple[Relay, str, asyncio.Task[None]]:
    name = f"warmlet-test-relay-{uuid.uuid4().hex[:8]}"
    relay = Relay(name, str(upstream), linger, parent)
    task = asyncio.create_task(relay.run())
    await asyncio.wait_for(relay.listening.wait(), 10)
    return relay, name, task


async def _until(pred: object, what: str) -> None:
    for _ in range(500):
        if pred():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(what)


async def test_relay_copies_both_ways_and_lingers_for_the_answer(tmp_path: Path) -> None:
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    server, seen = await _upstream(tmp_path / "up.sock", answer_after=0.3)
    relay, name, task = await _relay(tmp_path / "up.sock", linger=3, parent=sleeper.pid)
    try:
        r, w = await asyncio.open_unix_connection("\0" + name)
        w.write(b"one\n")
        assert await r.readline() == b"ONE\n"
        w.write(b"two\n")
        await w.drain()
        await _until(lambda: "got two" in seen, "the second request reached the runtime")
        w.close()  # the caller goes away before the answer
        await _until(lambda: seen[-1] == "answered", "the runtime answered")
        assert "eof" not in seen  # the runtime saw no hang-up while it was working
    finally:
        sleeper.kill()
        await sleeper.wait()
    # parent gone: no new connections; the lingering one ends at the latest after linger
    await asyncio.wait_for(task, 60)
    assert seen[-1] == "eof"
    with pytest.raises(OSError):
        await asyncio.open_unix_connection("\0" + name)
    server.close()
    assert not relay.connections


async def test_relay_closes_at_once_without_a_request_or_a_runtime(tmp_path: Path) -> None:
    server, _ = await _upstream(tmp_path / "up.sock")
    relay, name, task = await _relay(tmp_path / "up.sock", linger=600, parent=os.getpid())
    try:
        _, w = await asyncio.open_unix_connection("\0" + name)
        await _until(lambda: len(relay.connections) == 1, "connection relayed")
        w.close()  # nothing was sent: nothing to finish, no 10-minute linger
        await _until(lambda: not relay.connections, "connection closed without a linger")
        server.close()
        await server.wait_closed()
        (tmp_path / "up.sock").unlink()
        r, w = await asyncio.open_unix_connection("\0" + name)  # runtime down: closed at once
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_relay_serves_only_its_own_user(tmp_path: Path) -> None:
    """An abstract socket has no file permissions: another user is closed before any byte
    reaches the runtime (on the host, that would be root's containerd)."""
    if os.getuid() != 0:
        pytest.skip("needs root to connect as another user")
    server, seen = await _upstream(tmp_path / "up.sock")
    _, name, task = await _relay(tmp_path / "up.sock", linger=600, parent=os.getpid())
    try:
        out = await asyncio.to_thread(_exchange_as, 65534, name, b"hello\n")
        assert out == b""  # closed at once
        assert seen == []  # nothing reached the runtime
        r, w = await asyncio.open_unix_connection("\0" + name)  # root, as the relay: served
        w.write(b"hello\n")
        assert await r.readline() == b"HELLO\n"
        w.close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()


def _exchange_as(uid: int, name: str, data: bytes) -> bytes:
    """Connect to abstract socket ``name`` as ``uid`` (a forked child), send, return the answer."""
    import socket

    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: only syscalls, then _exit
        code = 0
        try:
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(20)
            s.connect("\0" + name)
            try:
                s.sendall(data)
                os.write(wr, s.recv(100))
            except (ConnectionResetError, BrokenPipeError):
                pass  # closed before or after our bytes (a reset): as good as an empty answer
        except BaseException as e:
            os.write(wr, repr(e).encode())
            code = 1
        os._exit(code)
    os.close(wr)
    try:
        out = b""
        while chunk := os.read(rd, 100):
            out += chunk
    finally:
        os.close(rd)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


async def test_sigterm_with_open_connections_exits_quietly(tmp_path: Path) -> None:
    """warmlet's clean shutdown: the relay ends at once, exit 0, nothing on stderr."""

    received: list[bytes] = []

    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            received.append(await r.readline())
            await r.read()
        w.close()

    server = await asyncio.start_unix_server(hold, path=str(tmp_path / "up.sock"))
    proc, name = await _relay_process(tmp_path / "up.sock")
    try:
        r, w = await _connect(name)
        w.write(b"a request in flight\n")
        await w.drain()
        await _until(lambda: received == [b"a request in flight\n"], "the request reached the runtime")
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
        assert err == b""
        assert await asyncio.wait_for(r.read(), 10) == b""  # its connections closed
        w.close()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()


async def test_after_its_parent_dies_the_relay_lingers_then_exits_cleanly(tmp_path: Path) -> None:
    """The SIGKILL path end to end: parent gone, a request answered after its caller left, the
    connection lingered out, then exit 0 with nothing on stderr."""
    server, seen = await _upstream(tmp_path / "up.sock", answer_after=0.3)
    parent = await asyncio.create_subprocess_exec("sleep", "60")
    proc, name = await _relay_process(tmp_path / "up.sock", "--linger", "1", "--parent", str(parent.pid))
    try:
        _, w = await _connect(name)
        w.write(b"in flight\n")
        await w.drain()
        await _until(lambda: "got in flight" in seen, "the request reached the runtime")
        w.close()
        parent.kill()
        await parent.wait()
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert (proc.returncode, err) == (0, b"")
        assert "answered" in seen  # the runtime finished the call its caller had abandoned
    finally:
        for p in (proc, parent):
            if p.returncode is None:
                p.kill()
                await p.wait()
        server.close()


async def _relay_process(upstream: Path, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m sandbox.cri.relay`` as warmlet runs it (stderr captured); its listen name."""
    name = f"warmlet-test-relay-{uuid.uuid4().hex[:8]}"
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "sandbox.cri.relay", "--listen", name, "--upstream", str(upstream)),
        *args,
        stderr=subprocess.PIPE,
    )
    return proc, name


async def _connect(name: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the relay's abstract socket once it listens (the process is starting)."""
    for _ in range(500):
        try:
            return await asyncio.open_unix_connection("\0" + name)
        except OSError:
            await asyncio.sleep(0.02)
    raise AssertionError(f"relay {name} never listened")


async def test_the_next_warmlet_waits_for_the_previous_relay(tmp_path: Path) -> None:
    """relay_alive / wait_for_relay_exit: what a restarted warmlet checks before adopting."""
    from sandbox.cri.relay import relay_alive, wait_for_relay_exit

    server, _ = await _upstream(tmp_path / "up.sock")
    relay = RelayProcess(str(tmp_path / "up.sock"))
    relay.start()
    try:
        assert relay.proc is not None
        pid = relay.proc.pid
        assert relay_alive(pid, relay.name)
        assert not relay_alive(pid, relay.name + "-other")  # a reused pid is not the relay
        assert not relay_alive(os.getpid(), relay.name)
        assert await wait_for_relay_exit(os.getpid(), relay.name, 5) is None  # not running: no wait
        waiter = asyncio.create_task(wait_for_relay_exit(pid, relay.name, 60))
        await asyncio.sleep(0.3)
        assert not waiter.done()  # still running: the next warmlet waits
        await asyncio.to_thread(relay.stop)
        waited = await asyncio.wait_for(waiter, 30)
        assert waited is not None and waited >= 0.3
        assert not relay_alive(pid, relay.name)
    finally:
        await asyncio.to_thread(relay.stop)
        server.close()
