"""sandbox/images.py's pure parts: its use of the reference parser, pull-policy decisions, image GC."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.backend import InvalidImageNameError, PullPolicy
from sandbox.images import (
    GcCandidate,
    ImageInfo,
    PullAction,
    decide_pull,
    normalize,
    parse_reference,
    select_gc_victims,
)


@pytest.mark.parametrize("image", ["", "BusyBox", "busybox:", "a//b"])
def test_parse_reference_fails_with_the_runtime_error(image: str) -> None:
    """sandbox.images wraps common.imageref (its cases are in test_imageref.py)."""
    with pytest.raises(InvalidImageNameError) as ei:
        parse_reference(image)
    assert ei.value.reason == "InvalidImageName"
    assert str(ei.value).startswith(f'Failed to apply default image tag "{image}"')
    assert normalize(image) == image


def test_parse_reference_and_normalize() -> None:
    assert parse_reference("busybox").normalized == normalize("busybox") == "docker.io/library/busybox:latest"


@pytest.mark.parametrize(
    ("policy", "present", "action"),
    [
        (PullPolicy.ALWAYS, True, PullAction.PULL),
        (PullPolicy.ALWAYS, False, PullAction.PULL),
        (PullPolicy.IF_NOT_PRESENT, True, PullAction.USE_PRESENT),
        (PullPolicy.IF_NOT_PRESENT, False, PullAction.PULL),
        (PullPolicy.NEVER, True, PullAction.USE_PRESENT),
        (PullPolicy.NEVER, False, PullAction.NEVER_MISSING),
    ],
)
def test_decide_pull(policy: PullPolicy, present: bool, action: PullAction) -> None:
    assert decide_pull(policy, present) == action


# ---------------------------------------------------------------------------- GC

GB = 1024**3


def cand(
    i: str, size: int, used: float, seen: float = 0.0, tags: tuple[str, ...] = (), pinned: bool = False
) -> GcCandidate:
    return GcCandidate(ImageInfo(id=i, size=size, tags=tags, pinned=pinned), first_seen=seen, last_used=used)


def test_gc_nothing_under_budget() -> None:
    cands = [cand("a", GB, 0), cand("b", GB, 0)]
    assert select_gc_victims(cands, set(), budget_bytes=2 * GB, min_age_seconds=0, now=1000) == []


def test_gc_lru_until_low_watermark() -> None:
    cands = [cand("new", GB, 900), cand("old", GB, 100), cand("mid", GB, 500), cand("older", GB, 50)]
    victims = select_gc_victims(
        cands, set(), budget_bytes=3 * GB, min_age_seconds=0, now=1000, low_fraction=0.5
    )
    # 4 GB total, target 1.5 GB: remove the three least recently used.
    assert [v.id for v in victims] == ["older", "old", "mid"]


def test_gc_protects_in_use_pinned_and_young() -> None:
    cands = [
        cand("sha256:used", GB, 0, tags=("127.0.0.1:5000/busybox:1",)),
        cand("sha256:pinned", GB, 0, pinned=True),
        cand("sha256:young", GB, 990, seen=990),
        cand("sha256:byid", GB, 0),
        cand("sha256:free", GB, 0),
    ]
    in_use = {"127.0.0.1:5000/busybox:1", "sha256:byid"}
    victims = select_gc_victims(cands, in_use, budget_bytes=GB, min_age_seconds=60, now=1000)
    assert [v.id for v in victims] == ["sha256:free"]


def test_gc_in_use_matches_normalized_names() -> None:
    cands = [cand("sha256:x", GB, 0, tags=("docker.io/library/busybox:latest",)), cand("sha256:y", GB, 0)]
    victims = select_gc_victims(cands, {"busybox"}, budget_bytes=GB // 2, min_age_seconds=0, now=10)
    assert [v.id for v in victims] == ["sha256:y"]


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10 * GB),
            st.floats(0, 1000),
            st.floats(0, 1000),
            st.booleans(),
            st.booleans(),
        ),
        max_size=25,
    ),
    st.integers(0, 50 * GB),
    st.floats(0, 500),
)
def test_gc_invariants(spec: list[tuple[int, float, float, bool, bool]], budget: int, min_age: float) -> None:
    now = 1000.0
    cands = [
        cand(f"id{i}", size, used, seen, pinned=pinned)
        for i, (size, used, seen, pinned, _) in enumerate(spec)
    ]
    in_use = {f"id{i}" for i, s in enumerate(spec) if s[4]}
    victims = select_gc_victims(cands, in_use, budget, min_age, now)
    by_id = {c.image.id: c for c in cands}
    total = sum(c.image.size for c in cands)
    if total <= budget:
        assert victims == []
    ids = [v.id for v in victims]
    assert len(ids) == len(set(ids))
    for v in victims:
        c = by_id[v.id]
        assert v.id not in in_use and not v.pinned
        assert now - max(c.first_seen, c.last_used) >= min_age
    # LRU order among victims.
    used = [by_id[i].last_used for i in ids]
    assert used == sorted(used)
    # It stops as soon as the low watermark is reached: dropping the last victim would be too few.
    if ids:
        freed_before_last = sum(by_id[i].image.size for i in ids[:-1])
        assert total - freed_before_last > int(budget * 0.8)
