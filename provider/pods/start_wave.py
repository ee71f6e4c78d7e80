"""The start wave: every pod held until one instant, started together at that instant (issue 16).

Held pods (provider/pods/hold.py) are grouped by instant; each instant has ONE timer on a
``TimerQueue`` (common/timers.py), whatever the number of its pods. The timer runs on the
monotonic clock: the instant's monotonic deadline is computed from the wall clock once, and the wall
clock is read again at most every ``REALIGN_SECONDS`` while the instant is ahead, so a wall-clock
jump (a step by NTP, an operator) re-aligns the deadline instead of starting early or late. No
container is ever started before the wall clock reads the instant: a timer that fires a hair early
is simply re-armed for what is left.

At the instant the wave's pods are queued for start, and at most ``concurrency`` worker tasks (not a
task per pod) take them one by one and call ``StartContainer`` on the pod's created containers, in
order, up to its first postStart hook. The runtime's best rate needs a bounded number of calls in
flight (more only make each call slower: docs/design.md has the figures): a fixed bound
(``pods.start_wave_concurrency``, else the backend's figure), or with ``pods.start_wave_adaptive``
the width found by a hill climb on the rate measured during the waves (provider/pods/wave_width.py).

While the wave runs, nothing else of its pods is done (their syncs return at once): status writes,
postStart hooks, probes and the rest of a pod's sync would compete with the starts for the CPU.
Once the last start of the wave is answered, every pod of the wave is released (``on_released``)
and its ordinary sync follows: the hook, the status (Running), the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from common.clock import SYSTEM, Clock
from common.timers import Timer, TimerQueue
from provider.metrics import HELD_PODS, START_WAVE_CONCURRENCY, START_WAVE_SECONDS, START_WAVE_SIZE
from provider.pods import wave_width as widths
from sandbox.backend import Backend, BackendError

log = logging.getLogger(__name__)

# While an instant is ahead, the wall clock is read again this often (a jump re-aligns the timer).
REALIGN_SECONDS = 1.0
# A re-computed deadline this far from the previous one is a clock jump (logged).
JUMP_SECONDS = 0.01


def wake_at(instant: float, wall: float, mono: float, realign: float = REALIGN_SECONDS) -> float | None:
    """None when the instant has come (``wall >= instant``); else the monotonic time to look
    again: the instant itself on the monotonic clock, or sooner to read the wall clock again."""
    left = instant - wall
    if left <= 0:
        return None
    return mono + min(left, realign)


def wave_width(concurrency: int, pending: int) -> int:
    """How many start workers a wave of ``pending`` pods gets: never more than the pods, at least 1."""
    return max(1, min(concurrency, pending))


@dataclass
class HeldPod:
    """A prepared pod waiting for its instant (or, during its wave, being started)."""

    uid: str
    instant: float
    starts: list[tuple[str, str]]  # (container name, container ID) to start, in order
    hook: str = ""  # the last of ``starts`` has a postStart hook: its pod's sync runs it
    started: list[str] = field(default_factory=list)  # names the wave started
    error: BackendError | None = None  # the start that failed (the pod's sync takes over)


class StartWave:
    """Held pods by instant, one timer per instant, a bounded start wave at each."""

    def __init__(
        self,
        backend: Backend,
        concurrency: int,
        on_released: Callable[[HeldPod], None],
        clock: Clock = SYSTEM,
        adaptive: bool = False,
    ) -> None:
        self.backend = backend
        self.concurrency = max(1, concurrency)
        self.adaptive = adaptive
        self.bounds = widths.Bounds.around(self.concurrency)
        self.rates: dict[int, float] = {}  # width -> starts/s measured (adaptive)
        self._win_start = 0.0  # monotonic start of the measured window
        self._win_done = 0  # starts completed in it
        self._win_skip = 0  # answers still to ignore after a width change (calls begun before it)
        self.on_released = on_released
        self.clock = clock
        self.timers = TimerQueue(clock, name="start-wave-timers")
        self._held: dict[str, HeldPod] = {}  # uid -> waiting for its instant
        self._by_instant: dict[float, dict[str, HeldPod]] = {}
        self._timer: dict[float, Timer] = {}
        self._deadline: dict[float, float] = {}  # instant -> its monotonic deadline
        self._ready: deque[HeldPod] = deque()  # due, not yet taken by a worker
        self._wave: dict[str, HeldPod] = {}  # uid -> being started or started, not yet released
        self._wave_instant: float | None = None  # the earliest instant of the running wave
        self._workers: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()  # cleared while a wave runs (others wait for its end)
        self.idle.set()

    # -- what the pod worker asks -----------------------------------------------------------------

    def holding(self, uid: str) -> float | None:
        """The instant the pod is held until (or being started for); None when not held."""
        p = self._held.get(uid) or self._wave.get(uid)
        return None if p is None else p.instant

    def starting(self, uid: str) -> bool:
        return uid in self._wave

    def __len__(self) -> int:
        """Pods held (waiting for their instant)."""
        return len(self._held)

    def hold(self, pod: HeldPod) -> None:
        """Hold a prepared pod until its instant (again: its instant or its containers changed)."""
        if pod.uid in self._wave:
            return  # its wave is under way: the pod's sync runs after it
        self._unhold(pod.uid)
        self._held[pod.uid] = pod
        bucket = self._by_instant.get(pod.instant)
        if bucket is None:
            bucket = self._by_instant[pod.instant] = {}
            self._arm(pod.instant)
        bucket[pod.uid] = pod
        HELD_PODS.set(len(self._held))

    def forget(self, uid: str) -> None:
        """The pod is no longer held (deleted, or its instant went by): never start it here."""
        self._unhold(uid)
        self._wave.pop(uid, None)
        HELD_PODS.set(len(self._held))

    def _unhold(self, uid: str) -> None:
        old = self._held.pop(uid, None)
        if old is None:
            return
        bucket = self._by_instant.get(old.instant)
        if bucket is not None:
            bucket.pop(uid, None)
            if not bucket:
                self._drop_instant(old.instant)

    def _drop_instant(self, instant: float) -> None:
        self._by_instant.pop(instant, None)
        self._deadline.pop(instant, None)
        timer = self._timer.pop(instant, None)
        if timer is not None:
            timer.cancel()

    # -- the timer ----------------------------------------------------------------------------------

    def _arm(self, instant: float) -> None:
        """The instant's monotonic deadline from the wall clock, computed once; the timer is set for
        it (or sooner, to read the wall clock again)."""
        wall, mono = self.clock.time(), self.clock.monotonic()
        self._deadline[instant] = mono + (instant - wall)
        wake = wake_at(instant, wall, mono)
        self._timer[instant] = self.timers.call_at(mono if wake is None else wake, self._fire, instant)

    def _fire(self, instant: float) -> None:
        if instant not in self._by_instant:
            return
        wall, mono = self.clock.time(), self.clock.monotonic()
        wake = wake_at(instant, wall, mono)
        if wake is not None:  # not yet by the wall clock: re-align on it and look again
            deadline = mono + (instant - wall)
            if abs(deadline - self._deadline[instant]) > JUMP_SECONDS:
                log.info(
                    "wall clock jump: start wave re-aligned instant=%.3f shift=%.3fs",
                    instant,
                    deadline - self._deadline[instant],
                )
            self._deadline[instant] = deadline
            self._timer[instant] = self.timers.call_at(wake, self._fire, instant)
            return
        pods = list(self._by_instant[instant].values())
        self._drop_instant(instant)
        for p in pods:
            self._held.pop(p.uid, None)
            self._wave[p.uid] = p
        self._ready.extend(pods)
        if self._wave_instant is None:
            self._wave_instant = instant
        self.idle.clear()
        HELD_PODS.set(len(self._held))
        START_WAVE_SIZE.observe(len(pods))
        if self.adaptive and not self._workers:
            self.concurrency = widths.choose(self.rates, self.bounds)
            self._win_start, self._win_done = mono, 0
        log.info(
            "start wave instant=%.3f pods=%d late=%.3fs width=%d",
            instant,
            len(pods),
            wall - instant,
            self.concurrency,
        )
        self._spawn()

    # -- the wave -------------------------------------------------------------------------------

    def _spawn(self) -> None:
        width = wave_width(self.concurrency, len(self._ready) + len(self._workers))
        START_WAVE_CONCURRENCY.set(width)
        loop = asyncio.get_running_loop()
        while len(self._workers) < width:
            self._workers.add(loop.create_task(self._work(), name="start-wave"))

    def _measured(self) -> None:
        """One start answered: at the end of a window, fold its rate in and pick the next width."""
        if not self.adaptive:
            return
        if self._win_skip:
            self._win_skip -= 1
            if not self._win_skip:
                self._win_start = self.clock.monotonic()
            return
        self._win_done += 1
        if self._win_done < widths.window_of(self.concurrency):
            return
        mono = self.clock.monotonic()
        rate = self._win_done / max(mono - self._win_start, 1e-6)
        self.rates = widths.learn(self.rates, self.concurrency, rate)
        width = widths.choose(self.rates, self.bounds)
        self._win_start, self._win_done = mono, 0
        if width != self.concurrency:
            log.info("start wave width=%d (was %d at %.1f starts/s)", width, self.concurrency, rate)
            self._win_skip = self.concurrency  # the calls in flight began at the old width
            self.concurrency = width
        self._spawn()

    async def _work(self) -> None:
        task = asyncio.current_task()
        try:
            while self._ready and len(self._workers) <= self.concurrency:
                await self._start(self._ready.popleft())
        finally:
            self._workers.discard(task)  # type: ignore[arg-type]
        if not self._workers and not self._ready:
            self._release()  # the last worker of the wave

    async def _start(self, p: HeldPod) -> None:
        for name, cid in p.starts:
            if p.uid not in self._wave:
                return  # forgotten meanwhile (the pod was deleted)
            try:
                await self.backend.start_container(cid)
            except BackendError as e:
                log.warning("start wave: start failed pod_uid=%s container=%s error=%s", p.uid, name, e)
                p.error = e
                return
            except Exception as e:  # never lose the rest of the wave to one pod
                log.exception("start wave: start failed pod_uid=%s container=%s", p.uid, name)
                p.error = BackendError(repr(e))
                return
            p.started.append(name)
            self._measured()

    def _release(self) -> None:
        """The wave is over: each of its pods goes back to its ordinary sync."""
        done = list(self._wave.values())
        self._wave.clear()
        self.idle.set()
        if self._wave_instant is not None:
            START_WAVE_SECONDS.observe(max(0.0, self.clock.time() - self._wave_instant))
            self._wave_instant = None
        for p in done:
            try:
                self.on_released(p)
            except Exception:
                log.exception("start wave: release failed pod_uid=%s", p.uid)

    async def run(self) -> None:
        """Until cancelled (with the pod controller): then the timers and any wave stop."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the timers and any wave under way (the pods' next syncs after a restart take over:
        created containers are started once, running ones never again)."""
        await self.timers.close()
        workers = list(self._workers)
        for t in workers:
            t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()
        self._ready.clear()
        self._wave.clear()
        self.idle.set()
        self._held.clear()
        for instant in list(self._by_instant):
            self._drop_instant(instant)
        HELD_PODS.set(0)
