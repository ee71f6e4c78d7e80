"""Image references, pull-policy decisions and image GC selection (pure parts of sandbox/images.py)."""

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

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("image", "normalized"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("library/busybox", "docker.io/library/busybox:latest"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("index.docker.io/busybox:1", "docker.io/library/busybox:1"),
        ("user/app", "docker.io/user/app:latest"),
        ("127.0.0.1:5000/busybox:1", "127.0.0.1:5000/busybox:1"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/a/b/c:v1.2-rc_3", "localhost:5000/a/b/c:v1.2-rc_3"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1@{DIGEST}", f"docker.io/library/busybox:1@{DIGEST}"),
        ("[::1]:5000/app:1", "[::1]:5000/app:1"),
        ("my-reg.example.com/team/my_app__x:TAG", "my-reg.example.com/team/my_app__x:TAG"),
    ],
)
def test_parse_and_normalize(image: str, normalized: str) -> None:
    assert parse_reference(image).normalized == normalized
    assert normalize(image) == normalized


@pytest.mark.parametrize(
    "image",
    [
        "",
        " busybox",
        "busybox ",
        "BusyBox",
        "busybox:",
        "busybox:-bad",
        "busybox@sha256:short",
        "a//b",
        "/busybox",
        "busybox/",
        "busy box",
        "busybox:" + "t" * 129,
        "reg:5000/app:1:2",
        "-leading/app",
        "a" * 256,
        "app@",
    ],
)
def test_invalid_references(image: str) -> None:
    with pytest.raises(InvalidImageNameError) as ei:
        parse_reference(image)
    assert ei.value.reason == "InvalidImageName"
    assert normalize(image) == image  # normalize never raises


def test_uppercase_repository_hint() -> None:
    with pytest.raises(InvalidImageNameError, match="must be lowercase"):
        parse_reference("127.0.0.1:5000/BusyBox:1")
    # An uppercase *domain* is fine (domains are case-insensitive).
    assert parse_reference("Registry.Example.com/app").domain == "Registry.Example.com"


_component = st.from_regex(r"[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_domain = st.sampled_from(["", "127.0.0.1:5000/", "reg.example.com/", "localhost/", "docker.io/"])


@settings(max_examples=300)
@given(_domain, st.lists(_component, min_size=1, max_size=3), st.one_of(st.none(), _tag))
def test_normalized_is_a_fixed_point(domain: str, path: list[str], tag: str | None) -> None:
    image = domain + "/".join(path) + (f":{tag}" if tag else "")
    ref = parse_reference(image)
    again = parse_reference(ref.normalized)
    assert again == ref.__class__(ref.domain, ref.path, ref.tag or "latest", ref.digest)
    assert normalize(ref.normalized) == ref.normalized
    assert ref.normalized.endswith(f":{tag or 'latest'}")


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
