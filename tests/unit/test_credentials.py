"""The keyring (provider/credentials.py): pull secret parsing and kubelet's image matching."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.credentials import (
    InvalidPullSecret,
    Keyring,
    decode_auth,
    entry_key,
    fingerprint,
    parse_docker_config,
    repository,
    secret_entries,
    urls_match,
)


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _secret(kind: str, key: str, doc: Any, name: str = "s", ns: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns},
        "type": kind,
        "data": {key: _b64(json.dumps(doc))},
    }


def dockerconfigjson(auths: dict[str, Any], name: str = "s") -> dict[str, Any]:
    return _secret("kubernetes.io/dockerconfigjson", ".dockerconfigjson", {"auths": auths}, name)


def dockercfg(auths: dict[str, Any], name: str = "s") -> dict[str, Any]:
    return _secret("kubernetes.io/dockercfg", ".dockercfg", auths, name)


def keyring(*secrets: dict[str, Any]) -> Keyring:
    parsed = [secret_entries(s) for s in secrets]
    return Keyring.of(p for p in parsed if p is not None)


def users(creds: list[Any]) -> list[str]:
    return [c.username for c in creds]


# ---------------------------------------------------------------------------- parsing


def test_dockerconfigjson_auth_field_is_decoded() -> None:
    (e,) = secret_entries(dockerconfigjson({"https://reg.io:5000": {"auth": _b64("alice:s3:cret")}})) or []
    assert e.key == "reg.io:5000"
    assert (e.credential.username, e.credential.password) == ("alice", "s3:cret")
    assert e.credential.source == "ns/s"
    assert e.credential.fingerprint == fingerprint("alice", "s3:cret")


def test_dockercfg_username_password_and_auth_overrides() -> None:
    entries = secret_entries(
        dockercfg(
            {
                "reg.io": {"username": "bob", "password": "pw", "email": "b@x"},
                "other.io": {"username": "ignored", "password": "x", "auth": _b64("carol:pw2")},
            }
        )
    )
    assert entries is not None
    got = {e.key: (e.credential.username, e.credential.password) for e in entries}
    assert got == {"reg.io": ("bob", "pw"), "other.io": ("carol", "pw2")}


def test_unpadded_auth_decodes_like_kubelet() -> None:
    raw = base64.b64encode(b"u:p").decode().rstrip("=")
    assert decode_auth(raw) == ("u", "p")
    assert decode_auth(_b64("user:")) == ("user", "")


@pytest.mark.parametrize("bad", ["!!!", _b64("no-colon")])
def test_bad_auth_field_is_invalid(bad: str) -> None:
    with pytest.raises(InvalidPullSecret):
        decode_auth(bad)


def test_other_secret_types_and_empty_data_are_not_pull_secrets() -> None:
    assert secret_entries({"type": "Opaque", "data": {".dockerconfigjson": _b64("{}")}}) is None
    assert secret_entries({"type": "kubernetes.io/dockerconfigjson", "data": {}}) is None
    assert secret_entries({"type": "kubernetes.io/dockercfg", "data": {".dockerconfigjson": "e30="}}) is None


@pytest.mark.parametrize(
    "secret",
    [
        {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": _b64("{not json")}},
        {"type": "kubernetes.io/dockerconfigjson", "data": {".dockerconfigjson": "%%%"}},
        {"type": "kubernetes.io/dockercfg", "data": {".dockercfg": _b64("[1, 2]")}},
        {"type": "kubernetes.io/dockercfg", "data": {".dockercfg": _b64('{"reg.io": "x"}')}},
    ],
)
def test_unparsable_secrets_raise(secret: dict[str, Any]) -> None:
    with pytest.raises(InvalidPullSecret):
        secret_entries(secret)


@pytest.mark.parametrize(
    ("location", "key"),
    [
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("http://reg.io:5000/v2/team/app", "reg.io:5000/team/app"),
        ("reg.io", "reg.io"),
        ("reg.io/", "reg.io"),
        ("reg.io/team", "reg.io/team"),
        ("*.corp.io", "*.corp.io"),
    ],
)
def test_entry_keys_strip_scheme_and_api_version(location: str, key: str) -> None:
    assert entry_key(location) == key


def test_invalid_location_is_skipped() -> None:
    assert parse_docker_config({"reg.io:notaport": {"username": "u", "password": "p"}}, "x") == []


# ---------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("glob", "target", "ok"),
    [
        ("reg.io", "reg.io/app", True),
        ("reg.io:5000", "reg.io:5000/app", True),
        ("reg.io:5000", "reg.io/app", False),  # ports must be equal
        ("reg.io", "reg.io:5000/app", False),
        ("*.reg.io", "eu.reg.io/app", True),
        ("*.reg.io", "reg.io/app", False),  # as many labels
        ("*.reg.io", "a.b.reg.io/app", False),
        ("*.*.io", "eu.reg.io/app", True),
        ("r?g.io", "reg.io/x", False),  # "?" starts the URL's query, as in kubelet
        ("re[a-g].io", "reg.io/x", True),
        ("re[^g].io", "reg.io/x", False),
        ("re\\g.io", "reg.io/x", True),
        ("reg.io/team", "reg.io/team/app", True),
        ("reg.io/team", "reg.io/teamx/app", True),  # a plain string prefix, as kubelet checks it
        ("reg.io/team", "reg.io/other/app", False),
        ("127.0.0.1:5001", "127.0.0.1:5001/private/busybox", True),
        ("127.0.0.*:5001", "127.0.0.1:5001/x", True),
        ("[", "reg.io/x", False),  # malformed pattern matches nothing
    ],
)
def test_urls_match(glob: str, target: str, ok: bool) -> None:
    assert urls_match(glob, target) is ok


def test_lookup_orders_most_specific_first_then_secret_order() -> None:
    ring = keyring(
        dockerconfigjson({"reg.io": {"username": "host1", "password": "p"}}, "a"),
        dockerconfigjson(
            {
                "reg.io/team": {"username": "team", "password": "p"},
                "reg.io/team/app": {"username": "app", "password": "p"},
            },
            "b",
        ),
        dockercfg({"reg.io": {"username": "host2", "password": "p"}}, "c"),
    )
    assert users(ring.lookup("reg.io/team/app:1")) == ["app", "team", "host1", "host2"]
    assert users(ring.lookup("reg.io/other:1")) == ["host1", "host2"]
    assert ring.lookup("elsewhere.io/team/app") == []


def test_lookup_strips_tag_and_digest() -> None:
    ring = keyring(dockerconfigjson({"reg.io/app": {"username": "u", "password": "p"}}))
    assert users(ring.lookup("reg.io/app:v1")) == ["u"]
    assert users(ring.lookup("reg.io/app@sha256:" + "a" * 64)) == ["u"]
    assert ring.lookup("reg.io/application") != []  # string prefix on the path


@pytest.mark.parametrize(
    "image", ["busybox", "library/busybox:1", "docker.io/team/app", "index.docker.io/x/y"]
)
def test_docker_hub_images_fall_back_to_the_index_entry(image: str) -> None:
    ring = keyring(dockerconfigjson({"https://index.docker.io/v1/": {"username": "hub", "password": "p"}}))
    assert users(ring.lookup(image)) == ["hub"]
    assert ring.lookup("reg.io/team/app") == []


def test_docker_io_entry_matches_normalized_hub_images() -> None:
    ring = keyring(dockerconfigjson({"docker.io": {"username": "hub", "password": "p"}}))
    assert users(ring.lookup("busybox")) == ["hub"]
    assert repository("busybox:1") == "docker.io/library/busybox"


def test_same_content_in_two_secrets_has_one_fingerprint() -> None:
    doc = {"reg.io": {"username": "u", "password": "p"}}
    ring = keyring(dockerconfigjson(doc, "a"), dockercfg(doc, "b"))
    creds = ring.lookup("reg.io/x")
    assert [c.source for c in creds] == ["ns/a", "ns/b"]
    assert len({c.fingerprint for c in creds}) == 1
    assert fingerprint("u", "p") != fingerprint("u", "q") != fingerprint("v", "p")


_label = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
_host = st.lists(_label, min_size=1, max_size=4).map(".".join)
_port = st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))
_path = st.lists(_label, min_size=1, max_size=3).map("/".join)


@given(_host, _port, _path)
def test_an_entry_for_the_host_matches_its_images(host: str, port: str, path: str) -> None:
    assert urls_match(f"{host}{port}", f"{host}{port}/{path}")
    assert urls_match(f"{host}{port}/{path}", f"{host}{port}/{path}")
    labels = host.split(".")
    wild = ".".join(["*"] * len(labels))
    assert urls_match(f"{wild}{port}", f"{host}{port}/{path}")
    assert not urls_match(f"x{host}{port}", f"{host}{port}/{path}")
    assert not urls_match(f"{host}:{0 if port else 1}", f"{host}{port}/{path}")


@given(st.lists(st.tuples(_host, st.sampled_from(["", "/team", "/team/app"]), _label), max_size=6), _host)
def test_lookup_returns_only_matching_entries_longest_key_first(
    entries: list[tuple[str, str, str]], image_host: str
) -> None:
    auths = [
        dockerconfigjson({f"{h}{p}": {"username": u, "password": "x"}}, f"s{i}")
        for i, (h, p, u) in enumerate(entries)
    ]
    ring = keyring(*auths)
    image = f"{image_host}.io/team/app:1"
    got = ring.lookup(image)
    want = [(f"{h}{p}", u) for h, p, u in entries if urls_match(f"{h}{p}", f"{image_host}.io/team/app")]
    assert sorted(users(got)) == sorted(u for _, u in want)
    keys = [k for k, _ in sorted(want, key=lambda kv: kv[0], reverse=True)]
    assert keys == sorted(keys, reverse=True)
