"""A reused sandbox's hostname, set in its UTS namespace from inside this process.

``nsenter -t <pause> -u hostname <name>`` forks and executes two programs: about 8 ms of a warm
start's 140 on the 2-core test bed (profiled). ``setns(2)`` into the pause process's UTS
namespace and ``sethostname(2)`` do the same in a few system calls. A namespace joined with
setns belongs to the calling thread only, so the switch runs in a thread of its own that joins
its original namespace again before it ends; should that return ever fail, the thread ends
anyway and no pooled worker thread is ever left in a pod's namespace.

Python 3.11 has no ``os.setns`` (3.12 does): the C library's is called through ctypes.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWUTS = 0x04000000
HOST_NAME_MAX = 64  # bytes, without the terminating NUL (Linux); kubelet's limit is 63

_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def set_hostname_in(pid: int, hostname: str) -> None:
    """Set ``hostname`` in the UTS namespace of process ``pid``. Blocking, and it switches the
    calling thread's namespace: call it through :func:`in_own_thread` only."""
    name = hostname.encode()
    if not name or len(name) > HOST_NAME_MAX:
        raise ValueError(f"hostname {hostname!r} is empty or longer than {HOST_NAME_MAX} bytes")
    libc = _c()
    own = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(f"/proc/{pid}/ns/uts", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(libc.setns(target, CLONE_NEWUTS), f"setns into the UTS namespace of pid {pid}")
        finally:
            os.close(target)
        try:
            _check(libc.sethostname(name, ctypes.c_size_t(len(name))), "sethostname")
        finally:
            _check(libc.setns(own, CLONE_NEWUTS), "setns back to this thread's UTS namespace")
    finally:
        os.close(own)


async def in_own_thread(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a new thread that ends with it (not the default executor's, whose threads
    live on), awaited. A cancelled caller does not wait: the thread finishes on its own."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if fut.done():  # the caller was cancelled
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn(*args)
        except BaseException as e:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=f"uts-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return await fut
