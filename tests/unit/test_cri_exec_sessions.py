"""Exec sessions of the CRI backend: the pure parts (stat/cmdline parsing, exec roots, the claim,
the process tree) exhaustively and with hypothesis on fake process tables, the stop-then-kill of a
tree against a fake node (forks meanwhile), the tracker's turns and claims with concurrent
sessions, and the /proc edge against real processes of this machine."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sandbox.cri.exec_sessions import (
    ExecSessions,
    Proc,
    Procfs,
    ProcId,
    claim,
    command,
    exec_roots,
    kill_tree,
    parse_cmdline,
    parse_stat,
    tree,
)

pytestmark = pytest.mark.unit

SHIM = 1  # the shim: outside the container's cgroup, parent of every exec root
SLEEP = command(["sleep", "4242"])

# ---------------------------------------------------------------------------------- parsing


@given(
    pid=st.integers(1, 4_194_304),
    comm=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=16),
    ppid=st.integers(0, 4_194_304),
    start=st.integers(0, 2**63),
)
def test_parse_stat_reads_ppid_and_start_whatever_the_comm(
    pid: int, comm: str, ppid: int, start: int
) -> None:
    # fields 3 (state) .. 24: ppid is field 4, starttime field 22
    fields = ["S", str(ppid), *(str(n) for n in range(5, 22)), str(start), "1234", "55"]
    assert parse_stat(f"{pid} ({comm}) {' '.join(fields)}\n") == (ppid, start)


def test_parse_stat_of_a_real_line() -> None:
    line = (
        "4242 (sleep) S 917 4242 4242 0 -1 4194560 103 0 0 0 0 0 0 0 20 0 1 0 "
        "1234567 1691648 220 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
    )
    assert parse_stat(line) == (917, 1234567)
    with pytest.raises((ValueError, IndexError)):
        parse_stat("4242 (sleep")


@given(st.lists(st.binary().filter(lambda b: b"\0" not in b), min_size=1, max_size=6))
def test_parse_cmdline_is_the_argv(argv: list[bytes]) -> None:
    assert parse_cmdline(b"\0".join(argv) + b"\0") == tuple(argv)


def test_parse_cmdline_edges() -> None:
    assert parse_cmdline(b"") == ()  # a zombie
    assert parse_cmdline(b"\0") == (b"",)
    assert parse_cmdline(b"sh\0-c\0\0") == (b"sh", b"-c", b"")
    assert command(["sh", "-c", "echo é"]) == (b"sh", b"-c", "echo é".encode())


# ---------------------------------------------------------------------------------- tables


def procs(*rows: tuple[int, int, int, tuple[bytes, ...]]) -> dict[int, Proc]:
    return {pid: Proc(pid, ppid, start, cmd) for pid, ppid, start, cmd in rows}


INIT = (10, SHIM, 5, command(["sleep", "3600"]))


@st.composite
def tables(draw: st.DrawFn) -> dict[int, Proc]:
    """Forests in a cgroup: each process's parent is an earlier one or outside (pid < 10)."""
    n = draw(st.integers(0, 9))
    out: dict[int, Proc] = {}
    for i in range(n):
        pid = 10 + i * 3 + draw(st.integers(0, 2))
        ppid = draw(st.sampled_from([SHIM, 2, *out]))
        parent_start = out[ppid].start if ppid in out else 0
        start = parent_start + draw(st.integers(0, 3))
        cmd = draw(st.sampled_from([SLEEP, command(["sh"]), command(["sleep", "1"])]))
        out[pid] = Proc(pid, ppid, start, cmd)
    return out


@given(tables())
def test_exec_roots_are_the_processes_whose_parent_is_outside(table: dict[int, Proc]) -> None:
    roots = exec_roots(table)
    assert {p.pid for p in roots} == {p.pid for p in table.values() if p.ppid not in table}
    assert roots == sorted(roots, key=lambda p: (p.start, p.pid))


@given(
    tables(),
    st.integers(0, 6),
    st.sets(st.tuples(st.integers(10, 40), st.integers(0, 30))),
    st.sets(st.tuples(st.integers(10, 40), st.integers(0, 30))),
)
def test_claim_takes_exactly_the_one_fitting_root(
    table: dict[int, Proc], begin: int, before: set[ProcId], taken: set[ProcId]
) -> None:
    fits = {
        p.ident
        for p in table.values()
        if p.ppid not in table
        and p.cmdline == SLEEP
        and p.start >= begin
        and p.ident not in before
        and p.ident not in taken
    }
    got = claim(table, SLEEP, begin, before, taken)
    assert got == (next(iter(fits)) if len(fits) == 1 else None)


def test_claim_scenarios() -> None:
    before = {(10, 5)}
    # the container's init is not a session's (it predates it and was there before)
    assert claim(procs(INIT), command(["sleep", "3600"]), 6, before, set()) is None
    assert claim(procs(INIT), command(["sleep", "3600"]), 0, before, set()) is None
    # the session's process: a new root with its command
    table = procs(INIT, (20, SHIM, 7, SLEEP))
    assert claim(table, SLEEP, 6, before, set()) == (20, 7)
    # ... not while it is still runc's init, nor once another session holds it
    assert claim(procs(INIT, (20, SHIM, 7, command(["runc", "init"]))), SLEEP, 6, before, set()) is None
    assert claim(table, SLEEP, 6, before, {(20, 7)}) is None
    # started before the session began: not this session's
    assert claim(table, SLEEP, 8, before, set()) is None
    # a descendant of the session's shell is no root (its parent is in the cgroup)
    shell = procs(INIT, (20, SHIM, 7, command(["sh", "-c", "sleep 4242"])), (21, 20, 7, SLEEP))
    assert claim(shell, SLEEP, 6, before, set()) is None
    # an orphan a finished exec left (reparented to the shim) with another command: not claimed
    orphan = procs(INIT, (21, SHIM, 7, command(["sleep", "300"])))
    assert claim(orphan, command(["sh", "-c", "sleep 300 &"]), 6, before, set()) is None
    # two fit (e.g. a foreign exec of the same command at the same moment): ambiguous, none
    two = procs(INIT, (20, SHIM, 7, SLEEP), (22, SHIM, 7, SLEEP))
    assert claim(two, SLEEP, 6, before, set()) is None
    assert claim(two, SLEEP, 6, before, {(22, 7)}) == (20, 7)
    # a recycled pid: the old process was there before, the new one (same pid) is new
    assert claim(procs(INIT, (20, SHIM, 9, SLEEP)), SLEEP, 6, {(10, 5), (20, 3)}, set()) == (20, 9)


@given(tables(), st.data())
def test_tree_is_the_root_and_all_its_descendants(table: dict[int, Proc], data: st.DataObject) -> None:
    if not table:
        assert tree(table, (10, 0)) == []
        return
    top = data.draw(st.sampled_from(sorted(table)))
    root = table[top].ident
    got = tree(table, root)
    assert got[0] == root and len(set(got)) == len(got)
    members = {pid for pid, _ in got}
    for pid, start in got[1:]:
        assert table[pid].start == start and table[pid].ppid in members
    # closed: every child of a member is a member
    assert all(p.pid in members for p in table.values() if p.ppid in members)
    # a recycled pid is not the root
    assert tree(table, (top, table[top].start + 1000)) == []


def test_tree_of_a_gone_root_is_empty() -> None:
    table = procs(INIT, (21, SHIM, 7, command(["sleep", "300"])))
    assert tree(table, (20, 7)) == []
    assert tree(procs(INIT, (20, SHIM, 7, SLEEP), (23, 20, 8, SLEEP), (24, 23, 9, SLEEP)), (20, 7)) == [
        (20, 7),
        (23, 8),
        (24, 9),
    ]


# ---------------------------------------------------------------------------------- a fake node


class FakeNode:
    """A container's cgroup: processes come and go; a running tree member may fork once when it
    is signalled (before being stopped), as a real one could between a read and a signal."""

    def __init__(self, *rows: tuple[int, int, int, tuple[bytes, ...]]) -> None:
        self.procs = procs(*rows)
        self.ticks = 100
        self.stopped: set[int] = set()
        self.signals: list[tuple[int, int]] = []
        self.fork_on_signal: dict[int, tuple[int, int, tuple[bytes, ...]]] = {}
        self.lock = threading.Lock()
        self.reads = 0

    def now(self) -> int:
        return self.ticks

    def spawn(self, pid: int, ppid: int, cmd: tuple[bytes, ...]) -> ProcId:
        with self.lock:
            self.ticks += 1
            self.procs[pid] = Proc(pid, ppid, self.ticks, cmd)
            return (pid, self.ticks)

    def exit(self, pid: int) -> None:
        with self.lock:
            gone = self.procs.pop(pid)
            for p in list(self.procs.values()):
                if p.ppid == pid:  # orphans go to the shim
                    self.procs[p.pid] = Proc(p.pid, SHIM, p.start, p.cmdline)
            assert gone

    def table(self, container_id: str) -> dict[int, Proc]:
        with self.lock:
            self.reads += 1
            return dict(self.procs)

    def signal(self, proc: ProcId, sig: int) -> bool:
        pid, start = proc
        with self.lock:
            p = self.procs.get(pid)
            if p is None or p.start != start:
                return False
            self.signals.append((pid, sig))
            if pid in self.fork_on_signal and pid not in self.stopped:
                cpid, _, ccmd = self.fork_on_signal.pop(pid)
                self.ticks += 1
                self.procs[cpid] = Proc(cpid, pid, self.ticks, ccmd)
        if sig == signal.SIGSTOP:
            self.stopped.add(pid)
        elif sig == signal.SIGKILL:
            self.exit(pid)
        return True


def test_kill_tree_stops_then_kills_the_tree_and_its_forks_only() -> None:
    node = FakeNode(INIT, (20, SHIM, 7, command(["sh"])), (21, 20, 8, SLEEP), (30, SHIM, 9, SLEEP))
    node.fork_on_signal[21] = (22, 21, SLEEP)  # forks while being stopped
    killed = kill_tree(node, "c", (20, 7))
    assert sorted(p for p, _ in killed) == [20, 21, 22]
    assert set(node.procs) == {10, 30}  # the init and another session's root untouched
    assert {pid for pid, _ in node.signals} == {20, 21, 22}
    first_kill = next(i for i, (_, s) in enumerate(node.signals) if s == signal.SIGKILL)
    assert all(s == signal.SIGSTOP for _, s in node.signals[:first_kill])  # all stopped first
    assert kill_tree(node, "c", (20, 7)) == []  # gone: nothing


def test_kill_tree_of_an_exited_root_signals_nothing() -> None:
    node = FakeNode(INIT, (21, SHIM, 8, command(["sleep", "300"])))  # the orphan of root 20
    assert kill_tree(node, "c", (20, 7)) == [] and node.signals == []
    node = FakeNode(INIT, (20, SHIM, 70, SLEEP))  # pid 20 recycled
    assert kill_tree(node, "c", (20, 7)) == [] and node.signals == []


# ---------------------------------------------------------------------------------- the tracker


async def until(cond: object, within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if callable(cond) and cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


def tracker(node: FakeNode, window: float = 2.0) -> ExecSessions:
    return ExecSessions(node, window=window)


async def test_a_session_kills_its_process_still_running_at_its_end() -> None:
    node = FakeNode(INIT)
    t = tracker(node)
    key = await t.exec_session_started("c", ["sleep", "4242"])
    proc = node.spawn(20, SHIM, SLEEP)  # the runtime starts it after the URL was asked for
    await until(lambda: t._sessions[key].root == proc)
    assert await t.exec_session_ended(key) == 1
    assert 20 not in node.procs and t._sessions == {} and t._turns == {}


async def test_a_session_whose_command_ended_kills_nothing_even_what_it_left_behind() -> None:
    node = FakeNode(INIT)
    t = tracker(node)
    script = ["sh", "-c", "sleep 300 &"]
    key = await t.exec_session_started("c", script)
    node.spawn(20, SHIM, command(script))
    node.spawn(21, 20, command(["sleep", "300"]))
    await until(lambda: t._sessions[key].root is not None)
    node.exit(20)  # the shell ends; its child is reparented to the shim
    assert await t.exec_session_ended(key) == 0
    assert 21 in node.procs and node.signals == []


async def test_the_end_claims_once_more_when_the_client_left_before_a_poll() -> None:
    node = FakeNode(INIT)
    t = tracker(node)
    key = await t.exec_session_started("c", ["sleep", "4242"])
    node.spawn(20, SHIM, SLEEP)
    assert await t.exec_session_ended(key) == 1  # before the first poll (50 ms)


async def test_concurrent_sessions_of_one_command_each_get_their_own_process() -> None:
    node = FakeNode(INIT)
    t = tracker(node)
    a = await t.exec_session_started("c", ["sleep", "4242"])
    b_started = asyncio.create_task(t.exec_session_started("c", ["sleep", "4242"]))
    await asyncio.sleep(0.1)
    assert not b_started.done()  # waits for a's turn: a has not found its process yet
    pa = node.spawn(20, SHIM, SLEEP)
    b = await asyncio.wait_for(b_started, 5)
    assert t._sessions[a].root == pa and pa in t._sessions[b].before
    pb = node.spawn(21, SHIM, SLEEP)
    await until(lambda: t._sessions[b].root == pb)
    # a's client leaves: only a's process goes; b's ends by itself later
    assert await t.exec_session_ended(a) == 1
    assert 20 not in node.procs and 21 in node.procs
    node.exit(21)
    assert await t.exec_session_ended(b) == 0 and t._turns == {}


async def test_sessions_of_other_commands_do_not_wait() -> None:
    node = FakeNode(INIT)
    t = tracker(node)
    a = await t.exec_session_started("c", ["sleep", "4242"])
    b = await asyncio.wait_for(t.exec_session_started("c", ["sleep", "1"]), 1)
    c = await asyncio.wait_for(t.exec_session_started("other", ["sleep", "4242"]), 1)
    for k in (a, b, c):
        assert await t.exec_session_ended(k) == 0


async def test_an_unrecognised_process_gives_up_the_turn_after_the_window_and_kills_nothing() -> None:
    node = FakeNode(INIT)
    t = tracker(node, window=0.3)
    a = await t.exec_session_started("c", ["./script.sh"])
    node.spawn(20, SHIM, command(["/bin/sh", "./script.sh"]))  # through its #! line
    b = await asyncio.wait_for(t.exec_session_started("c", ["./script.sh"]), 3)
    assert await t.exec_session_ended(a) == 0 and await t.exec_session_ended(b) == 0
    assert 20 in node.procs and node.signals == []


async def test_an_ambiguous_fit_claims_nothing() -> None:
    node = FakeNode(INIT)
    t = tracker(node, window=0.3)
    key = await t.exec_session_started("c", ["sleep", "4242"])
    node.spawn(20, SHIM, SLEEP)
    node.spawn(21, SHIM, SLEEP)  # e.g. crictl exec of the same command at the same moment
    await asyncio.sleep(0.5)
    assert await t.exec_session_ended(key) == 0 and node.signals == []


async def test_exec_sync_of_the_same_command_waits_while_a_session_looks() -> None:
    node = FakeNode(INIT)
    t = tracker(node)
    key = await t.exec_session_started("c", ["sleep", "4242"])
    entered = asyncio.Event()

    async def exec_sync() -> None:
        async with t.exclusive("c", ["sleep", "4242"]):
            entered.set()

    task = asyncio.create_task(exec_sync())
    await asyncio.sleep(0.1)
    assert not entered.is_set()
    node.spawn(20, SHIM, SLEEP)
    await asyncio.wait_for(task, 5)
    node.exit(20)
    assert await t.exec_session_ended(key) == 0 and t._turns == {}


async def test_cancelled_waits_and_close_leave_nothing_behind() -> None:
    node = FakeNode(INIT)
    t = tracker(node)
    a = await t.exec_session_started("c", ["sleep", "4242"])
    waiting = asyncio.create_task(t.exec_session_started("c", ["sleep", "4242"]))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert len(t._sessions) == 1 and t._turns[("c", SLEEP)].users == 1
    poller = t._sessions[a].poller
    await t.close()
    assert poller is not None and poller.done() and t._sessions == {} and t._turns == {}
    assert await t.exec_session_ended(a) == 0  # unknown by now: nothing


async def test_a_container_whose_processes_are_invisible_is_not_tracked() -> None:
    node = FakeNode()  # not even the init: this /proc is not the node's
    t = tracker(node)
    a = await t.exec_session_started("c", ["sleep", "4242"])
    b = await asyncio.wait_for(t.exec_session_started("c", ["sleep", "4242"]), 1)  # no turn held
    assert t._sessions[a].poller is None and node.reads == 2
    assert await t.exec_session_ended(a) == 0 and await t.exec_session_ended(b) == 0
    assert node.reads == 2 and t._turns == {}


async def test_a_failing_view_never_hangs_the_next_session() -> None:
    class Broken(FakeNode):
        def table(self, container_id: str) -> dict[int, Proc]:
            raise OSError("no /proc")

    t = tracker(Broken(INIT), window=0.2)
    with pytest.raises(OSError):
        await t.exec_session_started("c", ["sleep", "4242"])
    assert t._sessions == {} and t._turns == {}


# ---------------------------------------------------------------------------------- /proc


def test_procfs_reads_and_signals_exactly_one_real_process() -> None:
    view = Procfs()
    me = view._read(os.getpid())
    assert me is not None and me.ppid == os.getppid() and me.cmdline[0] == os.fsencode(sys.orig_argv[0])
    before = view.now()
    child = subprocess.Popen(["sleep", "30"])
    try:
        for _ in range(500):  # until the child has exec'd
            p = view._read(child.pid)
            if p is not None and p.cmdline == command(["sleep", "30"]):
                break
            time.sleep(0.01)
        assert p is not None and p.cmdline == command(["sleep", "30"])
        assert p.start >= before  # one clock: boot-time ticks
        assert view.signal((child.pid, p.start + 1), signal.SIGKILL) is False  # not that process
        assert child.poll() is None
        assert view.signal((child.pid, p.start), signal.SIGKILL) is True
        assert child.wait(5) == -signal.SIGKILL
    finally:
        child.kill()
        child.wait()
    assert view.signal((child.pid, p.start), signal.SIGKILL) is False  # gone
