"""Exec sessions of the CRI backend: the process an interactive exec started, killed when the
session ends while it still runs (its client left).

Why: containerd 1.6 runs a streaming exec under a context that the connection's end never
cancels, so a command that neither reads stdin nor uses a tty outlives its killed client (a
kubelet on containerd 1.6 leaks the same way). CRI
gives no handle on an exec's process, so the backend finds it on the node:

- runc starts an exec's process as a child of the containerd shim (a subreaper outside the
  container), in the container's cgroup: an *exec root* is a process of the container's cgroup
  whose parent is not in it. (The container's init is one too; it predates every session.)
- A session records the boot-time clock (``/proc/<pid>/stat`` starttime counts clock ticks since
  boot) and the exec roots that exist already, then claims the new exec root whose
  ``/proc/<pid>/cmdline`` is exactly its command, started after the session began, not there
  before and claimed by no other session. It looks for it while the session runs (a short
  back-off poll from the start, for ``CLAIM_WINDOW`` seconds at most) and once more at its end.
- Claims are exclusive: sessions of the same command in the same container take turns looking
  (the next one begins once the previous one has claimed, given up or ended; warmlet's own
  ExecSync of that command waits for its turn too), and a claim is made only when exactly one
  process fits. Two concurrent ``sleep 4242`` therefore get one process each; an ambiguous fit
  (e.g. the same command started at the same moment by something else than warmlet, such as
  ``crictl exec``) claims nothing.
- At the end, if the claimed root still runs (same pid *and* start time: a recycled pid is never
  touched), its process tree (the root and its descendants in the cgroup) is stopped, then
  killed (through a pidfd, checked against the start time after it is opened). When the root has
  already exited (the normal case: the command finished and the runtime closed the stream)
  nothing is killed: what it left behind on purpose (``sh -c 'sleep 100 &'``, reparented to the
  shim) survives, as on kubelet. A command whose process cannot be recognised (a script run
  through its ``#!`` line, a program that rewrites its argv) is not claimed: it is left running,
  as before.

Pure parts (stat/cmdline parsing, exec roots, the claim, the tree) are functions of a process
table; ``/proc`` is read at the edge (:class:`Procfs`, called in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Protocol

from common.clock import SYSTEM, Clock
from common.retry import STOP, periodic
from sandbox.cri import host

log = logging.getLogger("warmlet.cri")

ProcId = tuple[int, int]  # (pid, start time in clock ticks since boot): one process, never reused
Command = tuple[bytes, ...]

CLAIM_WINDOW = 5.0  # seconds a session looks for its process before it gives up its turn
FIRST_POLL = 0.05
MAX_POLL = 0.5
STOP_ROUNDS = 8  # passes that stop a tree's members until no new ones appear (forks)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks since boot
    cmdline: Command

    @property
    def ident(self) -> ProcId:
        return (self.pid, self.start)


Table = Mapping[int, Proc]  # the processes of one container's cgroup, by pid


# ---------------------------------------------------------------------------------- pure parts


def parse_stat(text: str) -> tuple[int, int]:
    """(ppid, starttime) from ``/proc/<pid>/stat`` (its comm field may hold spaces and parens)."""
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[19])


def parse_cmdline(raw: bytes) -> Command:
    """The argv in ``/proc/<pid>/cmdline`` (NUL-terminated arguments; empty for a zombie)."""
    if not raw:
        return ()
    return tuple(raw.removesuffix(b"\0").split(b"\0"))


def command(cmd: list[str]) -> Command:
    """An exec's command as its process's cmdline shows it (runc passes the argv unchanged)."""
    return tuple(os.fsencode(a) for a in cmd)


def exec_roots(table: Table) -> list[Proc]:
    """Processes whose parent is not in the container's cgroup, oldest first."""
    return sorted((p for p in table.values() if p.ppid not in table), key=lambda p: (p.start, p.pid))


def claim(
    table: Table, cmd: Command, begin: int, before: AbstractSet[ProcId], taken: AbstractSet[ProcId]
) -> ProcId | None:
    """The one exec root that is this session's: its command, started at or after ``begin``, not
    among the roots seen ``before`` the session, not ``taken`` by another; None unless exactly
    one fits."""
    fits = [
        p.ident
        for p in exec_roots(table)
        if p.cmdline == cmd and p.start >= begin and p.ident not in before and p.ident not in taken
    ]
    return fits[0] if len(fits) == 1 else None


def tree(table: Table, root: ProcId) -> list[ProcId]:
    """``root`` (if it still runs: same pid and start time) and its descendants, root first."""
    top = table.get(root[0])
    if top is None or top.ident != root:
        return []
    children: dict[int, list[Proc]] = {}
    for p in table.values():
        children.setdefault(p.ppid, []).append(p)
    out: list[ProcId] = []
    seen: set[int] = set()
    stack = [top]
    while stack:
        p = stack.pop()
        if p.pid in seen:
            continue
        seen.add(p.pid)
        out.append(p.ident)
        stack.extend(sorted(children.get(p.pid, ()), key=lambda c: c.pid, reverse=True))
    return out


# ---------------------------------------------------------------------------------- the edge


class ProcessView(Protocol):
    """What the tracker needs from the node (blocking: called in a thread, except ``now``)."""

    def now(self) -> int:
        """The boot-time clock in the unit of a process's start time."""

    def table(self, container_id: str) -> dict[int, Proc]:
        """The processes in the container's cgroup."""

    def signal(self, proc: ProcId, sig: int) -> bool:
        """Send ``sig`` to exactly that process; False when it no longer runs."""


def kill_tree(view: ProcessView, container_id: str, root: ProcId, rounds: int = STOP_ROUNDS) -> list[ProcId]:
    """Stop ``root``'s tree (again until no new member appears: a member may fork meanwhile),
    then kill what was stopped; returns the killed processes ([] when the root is gone)."""
    stopped: list[ProcId] = []
    for _ in range(rounds):
        new = [p for p in tree(view.table(container_id), root) if p not in stopped]
        if not new:
            break
        stopped += [p for p in new if view.signal(p, signal.SIGSTOP)]
    return [p for p in stopped if view.signal(p, signal.SIGKILL)]


class Procfs:
    """:class:`ProcessView` of this node's ``/proc``."""

    def __init__(self) -> None:
        self.hz = os.sysconf("SC_CLK_TCK")

    def now(self) -> int:
        return int(time.clock_gettime(time.CLOCK_BOOTTIME) * self.hz)

    def table(self, container_id: str) -> dict[int, Proc]:
        out = {}
        for pid in host.pids_in_cgroup_of(container_id):
            p = self._read(pid)
            if p is not None:
                out[pid] = p
        return out

    @staticmethod
    def _read(pid: int) -> Proc | None:
        try:
            ppid, start = parse_stat(host.read_text(f"/proc/{pid}/stat"))
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
            if parse_stat(host.read_text(f"/proc/{pid}/stat"))[1] != start:
                return None  # the pid was reused between the reads
        except (OSError, ValueError, IndexError):
            return None
        return Proc(pid, ppid, start, parse_cmdline(raw))

    @staticmethod
    def _start(pid: int) -> int | None:
        try:
            return parse_stat(host.read_text(f"/proc/{pid}/stat"))[1]
        except (OSError, ValueError, IndexError):
            return None

    def signal(self, proc: ProcId, sig: int) -> bool:
        pid, start = proc
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        try:
            # The pidfd pins one process: if its start time is still ``start``, it is ours.
            if self._start(pid) != start:
                return False
            signal.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------- the tracker


class _Turn:
    """The turn of one (container, command): held by the session looking for its process."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


@dataclass(eq=False)
class _Session:
    key: str
    container_id: str
    cmd: Command
    begin: int = 0
    before: frozenset[ProcId] = frozenset()
    root: ProcId | None = None
    counted: bool = False  # among its turn's users
    looking: bool = False  # holds its turn
    poller: asyncio.Task[None] | None = field(default=None, repr=False)


class ExecSessions:
    """The backend's ``ExecSessionTracker`` (see the module docstring)."""

    def __init__(
        self,
        view: ProcessView | None = None,
        *,
        clock: Clock = SYSTEM,
        window: float = CLAIM_WINDOW,
    ) -> None:
        self.view = view if view is not None else Procfs()
        self.clock = clock
        self.window = window
        self._sessions: dict[str, _Session] = {}
        self._turns: dict[tuple[str, Command], _Turn] = {}
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ the seam

    async def exec_session_started(self, container_id: str, cmd: list[str]) -> str:
        s = _Session(f"{container_id[:12]}-{next(self._ids)}", container_id, command(cmd))
        self._sessions[s.key] = s
        try:
            await self._take_turn(s)
            s.begin = self.view.now()
            table = await asyncio.to_thread(self.view.table, container_id)
            s.before = frozenset(p.ident for p in exec_roots(table))
        except BaseException:
            self._forget(s)
            raise
        if not table:
            # Not even the container's init is visible (no host /proc here): nothing to find.
            self._give_up_turn(s)
            return s.key
        s.poller = asyncio.create_task(self._look(s), name=f"exec-session-{s.key}")
        return s.key

    async def exec_session_ended(self, key: str) -> int:
        s = self._sessions.get(key)
        if s is None:
            return 0
        try:
            if s.poller is not None:
                s.poller.cancel()
                await asyncio.gather(s.poller, return_exceptions=True)
            if s.root is None and s.looking:
                await self._claim(s)  # the client may have left before a poll saw the process
            self._give_up_turn(s)
            if s.root is None:
                return 0
            killed = await asyncio.to_thread(kill_tree, self.view, s.container_id, s.root)
            if killed:
                log.info(
                    "exec session's processes killed after it ended container=%s session=%s "
                    "command=%r pids=%s",
                    s.container_id[:12],
                    s.key,
                    b" ".join(s.cmd)[:120].decode(errors="replace"),
                    [pid for pid, _ in killed],
                )
            return len(killed)
        finally:
            self._forget(s)

    @contextlib.asynccontextmanager
    async def exclusive(self, container_id: str, cmd: list[str]) -> AsyncIterator[None]:
        """Hold the turn of (container, command) while another exec of it runs (ExecSync), so
        that a session looking for its process never mistakes that one's for its own."""
        s = _Session("", container_id, command(cmd))
        try:
            await self._take_turn(s)
            yield
        finally:
            self._forget(s)

    async def close(self) -> None:
        sessions = list(self._sessions.values())
        pollers = [s.poller for s in sessions if s.poller is not None]
        for t in pollers:
            t.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
        for s in sessions:
            self._forget(s)

    # ------------------------------------------------------------------ looking for the process

    async def _look(self, s: _Session) -> None:
        deadline = self.clock.monotonic() + self.window
        delays = itertools.chain(
            itertools.takewhile(lambda d: d < MAX_POLL, (FIRST_POLL * 2**i for i in itertools.count())),
            itertools.repeat(MAX_POLL),
        )

        async def step() -> object:
            if self.clock.monotonic() >= deadline:
                return STOP
            return STOP if await self._claim(s) else None

        def on_error(e: Exception, failures: int) -> None:
            log.warning(
                "exec session process lookup failed session=%s attempt=%d error=%r", s.key, failures, e
            )

        await periodic(step, lambda: next(delays), clock=self.clock, wait_first=True, on_error=on_error)
        if s.root is None:
            log.info(
                "exec session's process not recognised; it will not be ended with the session "
                "container=%s session=%s",
                s.container_id[:12],
                s.key,
            )
        self._give_up_turn(s)  # not on cancellation: exec_session_ended claims once more first

    async def _claim(self, s: _Session) -> bool:
        table = await asyncio.to_thread(self.view.table, s.container_id)
        taken = {o.root for o in self._sessions.values() if o.container_id == s.container_id and o.root}
        s.root = claim(table, s.cmd, s.begin, s.before, taken)
        return s.root is not None

    # ------------------------------------------------------------------ turns

    async def _take_turn(self, s: _Session) -> None:
        turn = self._turns.setdefault((s.container_id, s.cmd), _Turn())
        turn.users += 1
        s.counted = True
        await turn.lock.acquire()
        s.looking = True

    def _give_up_turn(self, s: _Session) -> None:
        if s.looking:
            s.looking = False
            self._turns[(s.container_id, s.cmd)].lock.release()

    def _forget(self, s: _Session) -> None:
        self._give_up_turn(s)
        if s.counted:
            s.counted = False
            turn = self._turns[(s.container_id, s.cmd)]
            turn.users -= 1
            if turn.users == 0:
                del self._turns[(s.container_id, s.cmd)]
        if s.key:
            self._sessions.pop(s.key, None)
