"""The simulated runtime's containers: behaviour from pod annotations, state, timers, logs, usage.

A container is a record with a behaviour decided at create time (see ``sandbox.simulated`` for the
annotations). A running container costs one timer in a ``TimerQueue`` (its exit or its next log
tick, whichever is first), never a task; its log is a real CRI log file.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from common.clock import Clock
from common.crilog import STDERR, STDOUT, CRILogWriter
from common.timers import Timer, TimerQueue
from sandbox.backend import (
    ContainerNotRunningError,
    ContainerRuntimeState,
    ContainerSpec,
    ContainerState,
    ContainerUsage,
    CreateContainerError,
    ExecResult,
    ExecTimeoutError,
    NodeUsage,
    PodSandboxSpec,
    PodUsage,
)

log = logging.getLogger("sandbox.simulated")

ANN = "warmlet.io/"
ANN_RUN_SECONDS = ANN + "sim-run-seconds"
ANN_EXIT_CODE = ANN + "sim-exit-code"
ANN_EXIT_REASON = ANN + "sim-exit-reason"
ANN_LOG = ANN + "sim-log"
ANN_STDERR = ANN + "sim-stderr"
ANN_LOG_EVERY = ANN + "sim-log-every-seconds"
ANN_IGNORE_TERM = ANN + "sim-ignore-term"
ANN_CPU = ANN + "sim-cpu-nano-cores"
ANN_MEMORY = ANN + "sim-memory-bytes"
ANN_EXEC_EXIT_CODE = ANN + "sim-exec-exit-code"
ANN_EXEC_OUTPUT = ANN + "sim-exec-output"
ANN_EXEC_SECONDS = ANN + "sim-exec-seconds"

EXIT_TERM = 143  # 128 + SIGTERM
EXIT_KILL = 137  # 128 + SIGKILL


def _annotation(annotations: Mapping[str, str], key: str, container: str) -> str | None:
    value = annotations.get(f"{key}.{container}")
    return annotations.get(key) if value is None else value


def _float_annotation(
    annotations: Mapping[str, str], key: str, container: str, default: float | None
) -> float | None:
    raw = _annotation(annotations, key, container)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise CreateContainerError(f"invalid annotation {key}={raw!r}: not a number") from None
    if math.isnan(value) or value < 0:
        raise CreateContainerError(f"invalid annotation {key}={raw!r}: must be >= 0")
    return None if math.isinf(value) else value


def _int_annotation(annotations: Mapping[str, str], key: str, container: str, default: int) -> int:
    raw = _annotation(annotations, key, container)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise CreateContainerError(f"invalid annotation {key}={raw!r}: not an integer") from None


@dataclass(frozen=True)
class ContainerDefaults:
    """Behaviour of a container whose pod has no annotation for it."""

    run_seconds: float | None = None  # None: run until stopped
    cpu_nano_cores: int = 1_000_000
    memory_bytes: int = 8 * 1024 * 1024
    start_seconds: float = 0.0


class _Container:
    """Runtime state plus the behaviour decided at create time."""

    __slots__ = (
        "cpu_nano_cores",
        "exec_exit_code",
        "exec_output",
        "exec_seconds",
        "exit_at",
        "exit_code",
        "exit_reason",
        "ignore_term",
        "log_every",
        "log_lines",
        "memory_bytes",
        "next_is_exit",
        "run_seconds",
        "sandbox_id",
        "started_mono",
        "state",
        "stderr_lines",
        "ticks",
        "timer",
        "waiters",
    )

    def __init__(self, state: ContainerRuntimeState, sandbox_id: str) -> None:
        self.state = state
        self.sandbox_id = sandbox_id
        self.run_seconds: float | None = None
        self.exit_code = 0
        self.exit_reason = ""
        self.exec_exit_code = 0
        self.exec_output = ""
        self.exec_seconds = 0.0
        self.ignore_term = False
        self.log_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.log_every: float | None = None
        self.ticks = 0
        self.cpu_nano_cores = 0
        self.memory_bytes = 0
        self.exit_at: float | None = None  # monotonic clock time
        self.started_mono = 0.0  # monotonic time of the start: ticks are due at start + k * log_every
        self.next_is_exit = False
        self.timer: Timer | None = None
        self.waiters: list[asyncio.Future[None]] | None = None

    def cpu_usage_ns(self, now: float) -> int:
        started = self.state.started_at
        if started is None:
            return 0
        end = self.state.finished_at if self.state.finished_at is not None else now
        return int(max(0.0, end - started) * self.cpu_nano_cores)


class SimContainers:
    """Every simulated container of the node; ``notify(pod_uid)`` is called when one exits."""

    def __init__(self, clock: Clock, defaults: ContainerDefaults, notify: Callable[[str], None]) -> None:
        self.clock = clock
        self.defaults = defaults
        self.notify = notify
        self.timers = TimerQueue(clock, name="sim-timers")
        self.by_id: dict[str, _Container] = {}
        self.closed = False
        self._retired_cpu_ns = 0

    def create(
        self,
        sandbox_id: str,
        pod: PodSandboxSpec,
        container: ContainerSpec,
        attempt: int,
        image_ref: str,
        log_path: str,
    ) -> str:
        """A created (not started) container whose behaviour comes from the pod's annotations."""
        ann, cname = pod.annotations, container.name
        default_run = self.defaults.run_seconds
        if container.is_init and default_run is None:
            default_run = 0.0  # init containers must finish for the pod to start
        run_seconds = _float_annotation(ann, ANN_RUN_SECONDS, cname, default_run)
        exit_code = _int_annotation(ann, ANN_EXIT_CODE, cname, 0)
        log_every = _float_annotation(ann, ANN_LOG_EVERY, cname, None)
        cid = secrets.token_hex(32)
        state = ContainerRuntimeState(
            container_id=cid,
            pod_uid=pod.uid,
            name=cname,
            attempt=attempt,
            state=ContainerState.CREATED,
            image=container.image,
            image_ref=image_ref,
            created_at=self.clock.time(),
            log_path=log_path,
        )
        c = _Container(state, sandbox_id)
        c.run_seconds = run_seconds
        c.exit_code = exit_code
        c.exit_reason = _annotation(ann, ANN_EXIT_REASON, cname) or (
            "Completed" if exit_code == 0 else "Error"
        )
        c.ignore_term = (_annotation(ann, ANN_IGNORE_TERM, cname) or "").lower() == "true"
        c.log_lines = (_annotation(ann, ANN_LOG, cname) or "").splitlines()
        c.stderr_lines = (_annotation(ann, ANN_STDERR, cname) or "").splitlines()
        c.log_every = log_every if log_every else None
        c.cpu_nano_cores = _int_annotation(ann, ANN_CPU, cname, self.defaults.cpu_nano_cores)
        c.memory_bytes = _int_annotation(ann, ANN_MEMORY, cname, self.defaults.memory_bytes)
        c.exec_exit_code = _int_annotation(ann, ANN_EXEC_EXIT_CODE, cname, 0)
        c.exec_output = _annotation(ann, ANN_EXEC_OUTPUT, cname) or ""
        c.exec_seconds = _float_annotation(ann, ANN_EXEC_SECONDS, cname, 0.0) or 0.0
        try:  # the log file exists from creation on: a start only appends (cheap in a start wave)
            CRILogWriter(log_path).create()
        except OSError as e:
            log.warning("cannot create container log path=%s error=%s", log_path, e)
        self.by_id[cid] = c
        return cid

    async def start(self, container_id: str) -> None:
        c = self.by_id.get(container_id)
        if c is None:
            raise CreateContainerError(f"container {container_id[:12]} not found")
        if c.state.state != ContainerState.CREATED:
            raise CreateContainerError(f"container {container_id[:12]} is {c.state.state.value}, not created")
        if self.defaults.start_seconds > 0:
            await self.clock.sleep(self.defaults.start_seconds)
            if self.by_id.get(container_id) is not c or c.state.state != ContainerState.CREATED:
                raise CreateContainerError(f"container {container_id[:12]} was removed while starting")
        st = c.state
        st.state = ContainerState.RUNNING
        st.started_at = self.clock.time()
        writer = CRILogWriter(st.log_path)
        try:  # one append per stream (the file was created with the container)
            lines = [f"simulated container {st.name} started", *c.log_lines]
            writer.write("".join(line + "\n" for line in lines))
            if c.stderr_lines:
                writer.write("".join(line + "\n" for line in c.stderr_lines), STDERR)
        except OSError as e:
            log.warning("cannot write container log path=%s error=%s", st.log_path, e)
        c.started_mono = self.clock.monotonic()
        if c.run_seconds is not None:
            c.exit_at = c.started_mono + c.run_seconds
        self._arm(c)

    def _arm(self, c: _Container) -> None:
        """One timer per running container: the next log tick or the exit, whichever is first."""
        when = c.exit_at
        c.next_is_exit = when is not None
        if c.log_every is not None:
            tick = c.started_mono + (c.ticks + 1) * c.log_every
            if when is None or tick < when:
                when, c.next_is_exit = tick, False
        c.timer = None if when is None else self.timers.call_at(when, self._fire, c)

    def _fire(self, c: _Container) -> None:
        c.timer = None
        if c.state.state != ContainerState.RUNNING or self.closed:
            return
        # Ticks are due on a fixed schedule; a late timer (a loaded loop) catches up on every
        # tick due before now and before the exit, so the log does not depend on load.
        now = self.clock.monotonic()
        lines: list[str] = []
        if c.log_every is not None:
            while True:
                due = c.started_mono + (c.ticks + 1) * c.log_every
                if due > now or (c.exit_at is not None and due >= c.exit_at):
                    break
                c.ticks += 1
                lines.append(f"tick {c.ticks}\n")
        if lines:
            try:
                writer = CRILogWriter(c.state.log_path)
                for line in lines:
                    writer.write(line, STDOUT)
            except OSError:
                pass
        if c.exit_at is not None and now >= c.exit_at:
            self._finish(c, c.exit_code, c.exit_reason)
            return
        self._arm(c)

    def _finish(self, c: _Container, exit_code: int, reason: str, message: str = "") -> None:
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        st = c.state
        st.state = ContainerState.EXITED
        st.finished_at = self.clock.time()
        st.exit_code = exit_code
        st.reason = reason
        st.message = message
        _wake(c)
        self.notify(st.pod_uid)

    async def stop(self, container_id: str, grace_seconds: float) -> None:
        c = self.by_id.get(container_id)
        if c is None:
            return
        st = c.state
        if st.state == ContainerState.CREATED:
            st.state = ContainerState.EXITED
            st.finished_at = self.clock.time()
            st.exit_code = 0
            self.notify(st.pod_uid)
            return
        if st.state != ContainerState.RUNNING:
            return
        if not c.ignore_term:
            self._finish(c, EXIT_TERM, "Error")
            return
        if grace_seconds > 0:
            # TERM ignored: wait for a natural exit (or a removal), at most the grace period.
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            c.waiters = [*(c.waiters or []), waiter]
            deadline = self.timers.call_later(grace_seconds, _resolve, waiter)
            try:
                await waiter
            finally:
                deadline.cancel()
        if c.state.state == ContainerState.RUNNING:
            self._finish(c, EXIT_KILL, "Error")

    async def exec_sync(self, container_id: str, cmd: list[str], timeout_seconds: float) -> ExecResult:
        """A simulated command: it takes ``sim-exec-seconds`` and exits with ``sim-exec-exit-code``
        printing ``sim-exec-output`` (whatever ``cmd`` is); longer than the timeout: timed out."""
        c = self.by_id.get(container_id)
        if c is None or c.state.state != ContainerState.RUNNING:
            raise ContainerNotRunningError(f"container {container_id[:12]} is not running")
        if c.exec_seconds > timeout_seconds:
            await self.clock.sleep(timeout_seconds)
            raise ExecTimeoutError(f"command {' '.join(cmd)!r} timed out after {timeout_seconds:g}s")
        if c.exec_seconds > 0:
            await self.clock.sleep(c.exec_seconds)
        return ExecResult(exit_code=c.exec_exit_code, stdout=c.exec_output.encode())

    def drop(self, container_id: str) -> _Container | None:
        """Forget a container (killed if running); its CPU time stays in the node's total."""
        c = self.by_id.pop(container_id, None)
        if c is None:
            return None
        if c.timer is not None:
            c.timer.cancel()
            c.timer = None
        now = self.clock.time()
        if c.state.state == ContainerState.RUNNING:
            c.state.finished_at = now
            c.state.state = ContainerState.EXITED
            c.state.exit_code = EXIT_KILL
        _wake(c)
        self._retired_cpu_ns += c.cpu_usage_ns(now)
        return c

    def states(self, container_ids: Iterable[str]) -> list[ContainerRuntimeState]:
        by_id = self.by_id
        return [copy.copy(by_id[cid].state) for cid in container_ids if cid in by_id]

    async def close(self) -> None:
        self.closed = True
        for c in self.by_id.values():
            c.timer = None
        await self.timers.close()

    def reopen(self) -> None:
        self.closed = False
        self.timers.reopen()

    # ------------------------------------------------------------------ usage

    def node_usage(
        self,
        pods: Iterable[tuple[str, str, str, float, list[str]]],
        node_memory_bytes: int,
        node_fs_bytes: int,
        start_time: float,
    ) -> NodeUsage:
        """Usage of the node and of each pod ``(uid, namespace, name, start_time, container_ids)``."""
        now = self.clock.time()
        node_cpu_ns = self._retired_cpu_ns
        node_nano = 0
        node_ws = 0
        out: list[PodUsage] = []
        for uid, namespace, name, pod_start, cids in pods:
            containers: list[ContainerUsage] = []
            for cid in cids:
                c = self.by_id.get(cid)
                if c is None:
                    continue
                usage = c.cpu_usage_ns(now)
                node_cpu_ns += usage
                st = c.state
                if st.state != ContainerState.RUNNING:
                    continue
                node_nano += c.cpu_nano_cores
                node_ws += c.memory_bytes
                containers.append(
                    ContainerUsage.model_construct(
                        name=st.name,
                        container_id=cid,
                        start_time=st.started_at or 0.0,
                        timestamp=now,
                        cpu_usage_core_nanoseconds=usage,
                        cpu_usage_nano_cores=c.cpu_nano_cores,
                        memory_working_set_bytes=c.memory_bytes,
                        memory_usage_bytes=c.memory_bytes,
                        memory_rss_bytes=c.memory_bytes // 2,
                        rootfs_used_bytes=4096,
                        logs_used_bytes=0,
                    )
                )
            out.append(
                PodUsage.model_construct(
                    uid=uid,
                    namespace=namespace,
                    name=name,
                    start_time=pod_start,
                    timestamp=now,
                    containers=containers,
                    network_rx_bytes=0,
                    network_tx_bytes=0,
                )
            )
        fs_used = min(node_fs_bytes, 4096 * len(self.by_id))
        return NodeUsage(
            timestamp=now,
            start_time=start_time,
            cpu_usage_core_nanoseconds=node_cpu_ns,
            cpu_usage_nano_cores=node_nano,
            memory_working_set_bytes=node_ws,
            memory_usage_bytes=node_ws,
            memory_available_bytes=max(0, node_memory_bytes - node_ws),
            memory_rss_bytes=node_ws // 2,
            fs_capacity_bytes=node_fs_bytes,
            fs_available_bytes=node_fs_bytes - fs_used,
            fs_used_bytes=fs_used,
            pods=out,
        )


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake(c: _Container) -> None:
    """Wake the stops waiting for this container's exit."""
    if c.waiters:
        for w in c.waiters:
            _resolve(w)
        c.waiters = None
