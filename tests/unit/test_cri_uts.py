"""A reused sandbox's hostname (sandbox/cri/uts.py): set with setns+sethostname in a thread of its
own, against a real UTS namespace of this machine (``unshare --uts``); this process's own
hostname and namespace are never touched, whatever happens."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cri import uts

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"),
]


@pytest.fixture
def uts_process() -> Iterator[int]:
    """A process in a UTS namespace of its own (the pause process of a sandbox, for the test)."""
    p = subprocess.Popen(["unshare", "--uts", "sleep", "60"])
    try:
        want = os.readlink("/proc/self/ns/uts")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{p.pid}/ns/uts") == want:  # unshare has not exec'd sleep yet
            assert time.monotonic() < deadline
            time.sleep(0.01)
        yield p.pid
    finally:
        p.kill()
        p.wait()


def pid_max() -> int:
    return int(Path("/proc/sys/kernel/pid_max").read_text())


def hostname_of(pid: int) -> str:
    out = subprocess.run(
        ["nsenter", "-t", str(pid), "-u", "hostname"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


async def test_sets_the_hostname_in_the_process_namespace_only(uts_process: int) -> None:
    ours, own_ns = socket.gethostname(), os.readlink("/proc/self/ns/uts")
    await uts.in_own_thread(uts.set_hostname_in, uts_process, "pod-b")
    assert hostname_of(uts_process) == "pod-b"
    assert socket.gethostname() == ours
    assert os.readlink("/proc/self/ns/uts") == own_ns
    # a second pod of the same sandbox
    await uts.in_own_thread(uts.set_hostname_in, uts_process, "x" * 63)
    assert hostname_of(uts_process) == "x" * 63


async def test_a_gone_process_is_an_os_error_and_changes_nothing() -> None:
    ours = socket.gethostname()
    never = pid_max()  # pids stay below pid_max
    with pytest.raises(OSError):
        await uts.in_own_thread(uts.set_hostname_in, never, "pod-c")
    assert socket.gethostname() == ours


@pytest.mark.parametrize("name", ["", "y" * 65])
async def test_an_impossible_name_is_refused_before_any_switch(uts_process: int, name: str) -> None:
    before = hostname_of(uts_process)
    with pytest.raises(ValueError, match="hostname"):
        await uts.in_own_thread(uts.set_hostname_in, uts_process, name)
    assert hostname_of(uts_process) == before


async def test_the_work_runs_in_a_new_thread_that_ends() -> None:
    seen: list[threading.Thread] = []
    main = threading.current_thread()

    def where() -> str:
        seen.append(threading.current_thread())
        return "done"

    assert await uts.in_own_thread(where) == "done"
    assert seen[0] is not main
    seen[0].join(timeout=5)
    assert not seen[0].is_alive()


async def test_a_cancelled_caller_does_not_wait_and_nothing_is_raised_later() -> None:
    gate = threading.Event()

    def slow() -> int:
        gate.wait(5)
        return 1

    task = asyncio.create_task(uts.in_own_thread(slow))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    await asyncio.sleep(0.05)  # the thread's late result finds the future done: dropped quietly
