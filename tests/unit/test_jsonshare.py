"""common/jsonshare.py: shared objects equal the decoded ones, their repeats are one object, the
pool stays bounded; and the reflector's cache keeps the shared form."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.jsonshare import StringPool

pytestmark = pytest.mark.unit

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)


@given(json_values)
def test_a_shared_object_equals_the_original(obj: Any) -> None:
    assert StringPool(max_values=8).share(obj) == obj


@given(json_values, json_values)
def test_a_shared_object_equals_the_original_whatever_its_earlier_version(obj: Any, like: Any) -> None:
    pool = StringPool(max_values=8)
    assert pool.share(obj, pool.share(like)) == obj


def test_the_equal_parts_of_an_earlier_version_are_taken_over_and_the_rest_rebuilt() -> None:
    pool = StringPool()
    before = pool.share(pod(1))
    changed = pod(1)
    changed["status"] = {"phase": "Running", "message": "x" * 100}
    changed["metadata"]["labels"] = {"a": "b"}
    after = pool.share(changed, before)
    assert after == changed
    assert after["spec"] is before["spec"]  # equal: the same objects again
    assert after["metadata"] is not before["metadata"]  # changed: rebuilt, its equal parts kept
    assert after["metadata"]["uid"] is before["metadata"]["uid"]
    assert after["status"]["message"] is before["status"]["message"]
    assert after["status"] is not before["status"]
    # types are compared too: 1 is not taken over for True
    assert type(pool.share({"x": True}, {"x": 1})["x"]) is bool
    # list items by position
    got = pool.share({"l": [{"a": 1}, {"b": 2}]}, before_list := pool.share({"l": [{"a": 1}, {"b": 3}]}))
    assert got["l"][0] is before_list["l"][0] and got["l"][1] == {"b": 2}


def pod(i: int) -> dict[str, Any]:
    text = json.dumps(
        {
            "metadata": {"name": f"p-{i}", "uid": f"uid-{i}", "namespace": "ns"},
            "spec": {"containers": [{"name": "app", "terminationMessagePath": "/dev/termination-log"}]},
            "status": {"message": "x" * 100},
        }
    )
    decoded: dict[str, Any] = json.loads(text)
    return decoded


def test_repeated_keys_and_short_values_are_one_object_and_unique_values_stay() -> None:
    pool = StringPool()
    a, b = pool.share(pod(1)), pool.share(pod(2))
    ca, cb = a["spec"]["containers"][0], b["spec"]["containers"][0]
    assert ca["terminationMessagePath"] is cb["terminationMessagePath"]
    assert a["metadata"]["namespace"] is b["metadata"]["namespace"]
    ka = next(k for k in ca if k == "terminationMessagePath")
    kb = next(k for k in cb if k == "terminationMessagePath")
    assert ka is kb  # interned keys
    assert a["metadata"]["name"] == "p-1" and b["metadata"]["name"] == "p-2"
    assert a["status"]["message"] is not b["status"]["message"]  # long values are not pooled


def test_the_pool_starts_over_at_its_bound() -> None:
    pool = StringPool(max_values=3)
    for i in range(10):
        pool.share(f"v{i}")
        assert len(pool) <= 3
    x = pool.share("again")
    assert pool.share("again") is x


async def test_the_reflector_caches_and_hands_out_the_shared_form() -> None:
    from provider.reflector import Reflector

    items = [pod(1), pod(2)]

    class Api:
        async def list_all(self, path: str, **params: Any) -> dict[str, Any]:
            return {"metadata": {"resourceVersion": "1"}, "items": items}

        def watch(self, *a: Any, **kw: Any) -> Any:
            raise AssertionError("not watched in this test")

    seen: list[dict[str, Any]] = []
    r = Reflector(Api(), "/api/v1/pods", lambda t, o: seen.append(o))  # type: ignore[arg-type]
    await r._list("initial")
    one, two = r.objects["uid-1"], r.objects["uid-2"]
    assert one == pod(1) and two == pod(2)
    assert one["metadata"]["namespace"] is two["metadata"]["namespace"]
    assert seen[0] is one or seen[1] is one  # handlers get the cached object itself
    # a watched change takes over the equal parts of the version it replaces
    changed = pod(1)
    changed["status"] = {"phase": "Running"}
    await r._apply({"type": "MODIFIED", "object": changed})
    assert r.objects["uid-1"] == changed
    assert r.objects["uid-1"]["spec"] is one["spec"]
    # and a relist those of the cached ones
    await r._list("again")
    assert r.objects["uid-2"] is two or r.objects["uid-2"]["spec"] is two["spec"]
