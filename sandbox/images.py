"""Image cache: reference validation, pull-policy decisions, deduplicated pulls, LRU garbage collection.

Why its own module: many pods of one workload start at the same instant (a CronJob firing at
00:00:00); without deduplication each would ask the runtime to pull the same image. Here one pull
per image is in flight however many pods wait, a semaphore bounds parallel pulls, and invalid
references fail with ``InvalidImageName`` before the runtime is contacted (as kubelet does).

The pure parts (``parse_reference``, ``decide_pull``, ``select_gc_victims``) are unit tested; the
runtime is reached through the small ``ImageRuntime`` protocol so the cache can be tested with fakes.

Private images (KEP-2535, kubelet's default ``NeverVerifyPreloadedImages``): pulls with
credentials try each matching credential in order and record which one succeeded
(:mod:`sandbox.pull_records`); a present image warmlet pulled is used only by a pod whose
credentials pulled it (or after an anonymous pull succeeded), otherwise it is pulled again with the
pod's own credentials, which the registry accepts or refuses. Pulls are deduplicated per image and
set of credentials, so a pod never joins a pull made with someone else's credentials.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from cachetools import TTLCache

from common.clock import SYSTEM, Clock
from common.imageref import (
    ImageReference,
    InvalidImageReference,
    normalize_reference,
    parse_image_reference,
)
from sandbox import metrics
from sandbox.backend import (
    BackendError,
    ImageNeverPullError,
    ImagePullError,
    ImageResult,
    InvalidImageNameError,
    PullPolicy,
    RegistryCredential,
    RuntimeUnavailableError,
)
from sandbox.pull_records import PullRecords, must_verify

log = logging.getLogger("warmlet.images")

# The counter series of each pull result, looked up once (ensure runs for every container start).
_pull_result = functools.lru_cache(maxsize=16)(metrics.IMAGE_PULLS.labels)

# How long the runtime's answer for an image, got while ensuring it, stands for the container
# created right after (``ImageCache.status``): kubelet asks the runtime twice per container start
# (EnsureImageExists, then getImageUser); a warm start here asks once.
STATUS_REUSE_SECONDS = 2.0

# ---------------------------------------------------------------------------- references


def parse_reference(image: str) -> ImageReference:
    """Validate and normalize an image reference (:mod:`common.imageref`); raise
    InvalidImageNameError like kubelet."""
    try:
        return parse_image_reference(image)
    except InvalidImageReference as e:
        raise InvalidImageNameError(str(e)) from None


def normalize(image: str) -> str:
    """Normalized reference string, or the input unchanged when it does not parse."""
    return normalize_reference(image)


# ---------------------------------------------------------------------------- pull policy


class PullAction(StrEnum):
    USE_PRESENT = "use_present"
    PULL = "pull"
    NEVER_MISSING = "never_missing"


def decide_pull(policy: PullPolicy, present: bool) -> PullAction:
    """Kubelet's decision: Always pulls; IfNotPresent pulls only when missing; Never never pulls."""
    if policy == PullPolicy.ALWAYS:
        return PullAction.PULL
    if present:
        return PullAction.USE_PRESENT
    if policy == PullPolicy.NEVER:
        return PullAction.NEVER_MISSING
    return PullAction.PULL


# ---------------------------------------------------------------------------- garbage collection


@dataclass(frozen=True)
class ImageInfo:
    """What the cache needs to know of one image the runtime has."""

    id: str
    size: int = 0
    tags: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()
    pinned: bool = False
    uid: int | None = None  # the image's configured user, when numeric
    username: str = ""  # ... or by name

    def names(self) -> set[str]:
        return {self.id, *self.tags, *self.digests}


@dataclass(frozen=True)
class GcCandidate:
    image: ImageInfo
    first_seen: float
    last_used: float


def select_gc_victims(
    images: Iterable[GcCandidate],
    in_use: set[str],
    budget_bytes: int,
    min_age_seconds: float,
    now: float,
    low_fraction: float = 0.8,
) -> list[ImageInfo]:
    """Least-recently-used unused images to remove so total size falls to ``low_fraction * budget``.

    Nothing happens while the total is within the budget (kubelet's high/low thresholds). Images
    whose id, tag or digest is in ``in_use`` (live containers, pool sandboxes, the pause image), pinned
    images and images first seen or used less than ``min_age_seconds`` ago are never selected.
    """
    cands = list(images)
    total = sum(c.image.size for c in cands)
    if total <= budget_bytes:
        return []
    target = int(budget_bytes * low_fraction)
    in_use_norm = in_use | {normalize(n) for n in in_use}
    eligible = [
        c
        for c in cands
        if not c.image.pinned
        and not (c.image.names() & in_use_norm)
        and not ({normalize(n) for n in c.image.tags} & in_use_norm)
        and now - max(c.first_seen, c.last_used) >= min_age_seconds
    ]
    eligible.sort(key=lambda c: (c.last_used, c.first_seen, c.image.id))
    victims: list[ImageInfo] = []
    for c in eligible:
        if total <= target:
            break
        victims.append(c.image)
        total -= c.image.size
    return victims


# ---------------------------------------------------------------------------- the cache


class ImageRuntime(Protocol):
    """The image calls the cache needs (implemented over CRI by ``CriImageRuntime``)."""

    async def status(self, image: str) -> ImageInfo | None: ...

    async def pull(self, image: str, credential: RegistryCredential | None = None) -> str:
        """Pull ``image`` (with ``credential`` when given); the image ref."""
        ...

    async def list(self) -> list[ImageInfo]: ...

    async def remove(self, image_id: str) -> None: ...


@dataclass
class _Usage:
    first_seen: float
    last_used: float


@dataclass
class ImageCache:
    """Deduplicated, bounded pulls plus usage tracking for LRU garbage collection."""

    runtime: ImageRuntime
    max_parallel_pulls: int = 4
    gc_budget_bytes: int = 20 * 1024**3
    gc_min_age_seconds: float = 120.0
    clock: Clock = SYSTEM  # usage ages (monotonic) and pull durations
    records: PullRecords = field(default_factory=PullRecords)  # who pulled what (KEP-2535)
    _sem: asyncio.Semaphore = field(init=False)
    # (normalized reference, fingerprints of the credentials) -> the pull in flight
    _inflight: dict[tuple[str, tuple[str, ...]], asyncio.Task[ImageResult]] = field(
        init=False, default_factory=dict
    )
    _usage: dict[str, _Usage] = field(init=False, default_factory=dict)
    # image as a pod names it -> the runtime's latest answer for it (STATUS_REUSE_SECONDS)
    _statuses: TTLCache[str, ImageInfo] = field(init=False)

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(max(1, self.max_parallel_pulls))
        self._statuses = TTLCache(maxsize=1024, ttl=STATUS_REUSE_SECONDS, timer=self.clock.monotonic)

    async def _ask(self, image: str) -> ImageInfo | None:
        """The runtime's answer for ``image``, remembered for the container created next."""
        info = await self.runtime.status(image)
        if info is None:
            self._statuses.pop(image, None)
        else:
            self._statuses[image] = info
        return info

    async def status(self, image: str) -> ImageInfo | None:
        """The image a container is about to be created from (its id and configured user): the
        answer ``ensure`` got at most ``STATUS_REUSE_SECONDS`` ago, else the runtime's now. An
        image removed meanwhile by someone else fails the runtime's CreateContainer as it would a
        moment after a fresh answer."""
        info = self._statuses.get(image)
        return info if info is not None else await self._ask(image)

    def touch(self, image_id: str) -> None:
        """Record a use of an image (a container was created from it)."""
        now = self.clock.monotonic()
        u = self._usage.get(image_id)
        if u is None:
            self._usage[image_id] = _Usage(first_seen=now, last_used=now)
        else:
            u.last_used = now

    async def ensure(
        self, image: str, policy: PullPolicy, credentials: Sequence[RegistryCredential] = ()
    ) -> ImageResult:
        """Make ``image`` available per ``policy`` to a pod holding ``credentials`` (those matching
        the image, in the order to try); one pull per image and credentials in flight, shared by
        all its waiters."""
        ref = parse_reference(image)  # InvalidImageName before the runtime is contacted
        fingerprints = tuple(sorted({c.fingerprint for c in credentials}))
        key = (ref.normalized, fingerprints)
        present = await self._ask(image)
        if present is not None and must_verify(self.records.get(present.id), ref.repository, fingerprints):
            # Pulled by warmlet with credentials this pod does not hold: it may not use the image
            # before the registry accepted its own (kubelet hides the image's presence the same way).
            _pull_result("verify").inc()
            log.info("image credentials verification image=%s id=%s", image, present.id)
            present = None
        action = decide_pull(policy, present is not None)
        if action == PullAction.USE_PRESENT:
            assert present is not None
            self.touch(present.id)
            _pull_result("present").inc()
            return ImageResult.model_construct(
                image=image, image_ref=present.id, pulled=False, size_bytes=present.size
            )
        if action == PullAction.NEVER_MISSING:
            _pull_result("never").inc()
            raise ImageNeverPullError(f'Container image "{image}" is not present with pull policy of Never')
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._pull(image, ref.repository, credentials, present), name=f"image-pull:{key[0]}"
            )
            self._inflight[key] = task
            task.add_done_callback(functools.partial(self._pull_done, key))
        else:
            _pull_result("deduplicated").inc()
        # shield: a cancelled waiter must not cancel the pull other pods are waiting for.
        result = await asyncio.shield(task)
        return result.model_copy(update={"image": image})

    def _pull_done(self, key: tuple[str, tuple[str, ...]], task: asyncio.Task[ImageResult]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters got it; avoid "exception never retrieved" noise

    async def _pull_with(
        self, image: str, credentials: Sequence[RegistryCredential]
    ) -> tuple[str, RegistryCredential | None]:
        """Pull anonymously, or with each credential in turn until one is accepted (kubelet);
        all refused: ImagePullError with every registry answer."""
        if not credentials:
            attempts: Sequence[RegistryCredential | None] = (None,)
        else:
            attempts = credentials
        errors: list[str] = []
        for cred in attempts:
            try:
                return await self.runtime.pull(image, cred), cred
            except RuntimeUnavailableError:
                raise
            except BackendError as e:
                detail = getattr(e, "details", None) or e.message
                log.warning(
                    "image pull failed image=%s credential=%s error=%r",
                    image,
                    cred.source if cred is not None else "",
                    detail,
                )
                errors.append(str(detail))
        detail = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        raise ImagePullError(f'Failed to pull image "{image}": {detail}')

    async def _pull(
        self,
        image: str,
        repo: str,
        credentials: Sequence[RegistryCredential],
        before: ImageInfo | None,
    ) -> ImageResult:
        async with self._sem:
            t0 = self.clock.monotonic()
            log.info("image pull start image=%s credentials=%d", image, len(credentials))
            try:
                image_ref, used = await self._pull_with(image, credentials)
            except BackendError:
                _pull_result("error").inc()
                raise
            elapsed = self.clock.monotonic() - t0
            after = await self._ask(image)
        size = after.size if after is not None else 0
        image_id = after.id if after is not None else image_ref
        self.records.record(image_id, repo, used.fingerprint if used is not None else None)
        # Always-policy pulls of an unchanged present image moved no layers: report them as not pulled.
        pulled = before is None or before.id != image_id
        if pulled:
            _pull_result("pulled").inc()
            metrics.IMAGE_PULL_BYTES.inc(size)
            metrics.IMAGE_PULL_SECONDS.observe(elapsed)
        else:
            _pull_result("present").inc()
        self.touch(image_id)
        log.info(
            "image pull done image=%s id=%s bytes=%d seconds=%.3f pulled=%s",
            image,
            image_id,
            size,
            elapsed,
            pulled,
        )
        return ImageResult(image=image, image_ref=image_id, pulled=pulled, size_bytes=size)

    async def garbage_collect(self, in_use: set[str]) -> list[str]:
        """Remove LRU unused images beyond the disk budget; return the removed image ids."""
        images = await self.runtime.list()
        now = self.clock.monotonic()
        cands = []
        for img in images:
            u = self._usage.get(img.id)
            if u is None:  # first time we see it: start its age clock now
                u = self._usage[img.id] = _Usage(first_seen=now, last_used=now)
            cands.append(GcCandidate(img, u.first_seen, u.last_used))
        inflight = {name for name, _ in self._inflight}
        victims = select_gc_victims(
            cands, in_use | inflight, self.gc_budget_bytes, self.gc_min_age_seconds, now
        )
        removed = []
        for v in victims:
            try:
                await self.runtime.remove(v.id)
            except BackendError as e:
                log.warning("image gc remove failed id=%s error=%s", v.id, e)
                continue
            self._usage.pop(v.id, None)
            self.records.forget([v.id])
            self._statuses.clear()  # no answer naming a removed image is handed out
            removed.append(v.id)
            metrics.IMAGE_GC_REMOVED.inc()
            log.info("image gc removed id=%s tags=%s bytes=%d", v.id, ",".join(v.tags), v.size)
        known = {i.id for i in images}
        for gone in set(self._usage) - known:
            self._usage.pop(gone, None)
        return removed

    async def close(self) -> None:
        """Cancel pulls still in flight (no orphan tasks)."""
        tasks = list(self._inflight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()
