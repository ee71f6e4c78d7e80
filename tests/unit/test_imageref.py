"""common.imageref: the one image-reference parser (docker reference grammar, kubelet/containerd
normalisation). Cases from the former sandbox/images.py and sandbox/simulated.py parsers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.imageref import (
    ImageReference,
    InvalidImageReference,
    normalize_reference,
    parse_image_reference,
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
        ("myorg/app:v1", "docker.io/myorg/app:v1"),
        ("127.0.0.1:5000/busybox:1", "127.0.0.1:5000/busybox:1"),
        ("127.0.0.1:5000/a/b:x", "127.0.0.1:5000/a/b:x"),
        ("localhost/app", "localhost/app:latest"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost:5000/a/b/c:v1.2-rc_3", "localhost:5000/a/b/c:v1.2-rc_3"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.9"),
        (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
        (f"busybox:1@{DIGEST}", f"docker.io/library/busybox:1@{DIGEST}"),
        ("[::1]:5000/app:1", "[::1]:5000/app:1"),
        ("my-reg.example.com/team/my_app__x:TAG", "my-reg.example.com/team/my_app__x:TAG"),
        ("reg.example.com:443/a-b/c.d:1", "reg.example.com:443/a-b/c.d:1"),
        ("Registry.Example.com/app", "Registry.Example.com/app:latest"),  # domains: any case
        ("UPPER/case", "UPPER/case:latest"),  # an upper-case first component is a host
    ],
)
def test_parse_and_normalize(image: str, normalized: str) -> None:
    assert parse_image_reference(image).normalized == normalized
    assert normalize_reference(image) == normalized


@pytest.mark.parametrize(
    ("image", "repository", "version"),
    [
        ("busybox", "docker.io/library/busybox", ":latest"),
        ("busybox:1.36", "docker.io/library/busybox", ":1.36"),
        ("myorg/app:v1", "docker.io/myorg/app", ":v1"),
        ("localhost:5000/app", "localhost:5000/app", ":latest"),
        ("127.0.0.1:5000/a/b:x", "127.0.0.1:5000/a/b", ":x"),
        ("registry.k8s.io/pause:3.10", "registry.k8s.io/pause", ":3.10"),
        (f"busybox@{DIGEST}", "docker.io/library/busybox", f"@{DIGEST}"),
        (f"busybox:1@{DIGEST}", "docker.io/library/busybox", f"@{DIGEST}"),  # the digest wins
    ],
)
def test_repository_and_version(image: str, repository: str, version: str) -> None:
    ref = parse_image_reference(image)
    assert (ref.repository, ref.version) == (repository, version)


def test_parts() -> None:
    assert parse_image_reference(f"reg:5000/a/b:t@{DIGEST}") == ImageReference("reg:5000", "a/b", "t", DIGEST)
    assert parse_image_reference("busybox") == ImageReference("docker.io", "library/busybox")


@pytest.mark.parametrize(
    "image",
    [
        "",
        " busybox",
        "busybox ",
        "BusyBox",
        "busybox:",
        "busybox:-bad",
        "busybox:bad tag",
        "busybox@sha256:short",
        "x@sha256:zz",
        "a//b",
        "/busybox",
        "busybox/",
        "busy box",
        "a b",
        "-x",
        "busybox:" + "t" * 129,
        "reg:5000/app:1:2",
        "-leading/app",
        "a" * 256,
        "app@",
        "reg.example.com/Team/app",
    ],
)
def test_invalid_references(image: str) -> None:
    with pytest.raises(InvalidImageReference) as ei:
        parse_image_reference(image)
    assert str(ei.value).startswith(f'Failed to apply default image tag "{image}": ')
    assert normalize_reference(image) == image  # normalize never raises


def test_uppercase_repository_hint() -> None:
    with pytest.raises(InvalidImageReference, match="must be lowercase"):
        parse_image_reference("127.0.0.1:5000/BusyBox:1")
    with pytest.raises(InvalidImageReference, match="not be more than 255"):
        parse_image_reference("reg.io/" + "a" * 255)


_component = st.from_regex(r"[a-z0-9]{1,6}([._-][a-z0-9]{1,6}){0,2}", fullmatch=True)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_domain = st.sampled_from(
    ["", "127.0.0.1:5000/", "reg.example.com/", "localhost/", "docker.io/", "[::1]:5000/"]
)
_digest = st.one_of(st.none(), st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True))


@settings(max_examples=300)
@given(_domain, st.lists(_component, min_size=1, max_size=3), st.one_of(st.none(), _tag), _digest)
def test_normalized_is_a_fixed_point(
    domain: str, path: list[str], tag: str | None, digest: str | None
) -> None:
    image = domain + "/".join(path) + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = parse_image_reference(image)
    again = parse_image_reference(ref.normalized)
    assert again == ImageReference(ref.domain, ref.path, ref.tag or ("" if digest else "latest"), ref.digest)
    assert normalize_reference(ref.normalized) == ref.normalized
    assert ref.repository.count("/") >= 1  # always qualified with a host
    if digest:
        assert ref.version == f"@{digest}" and ref.normalized.endswith(f"@{digest}")
    else:
        assert ref.version == f":{tag or 'latest'}" and ref.normalized.endswith(ref.version)
    if (not domain and len(path) == 1) or domain == "docker.io/":
        assert ref.domain == "docker.io" and ("/" in ref.path)
