"""Watch lines of any size (a ~1 MB pod must not break the node's pod watch)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from provider.kubeclient import _lines


class _Chunks:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def _gen(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._gen()


async def _collect(chunks: list[bytes], **kw: Any) -> list[bytes]:
    return [line async for line in _lines(_Chunks(chunks), **kw)]  # type: ignore[arg-type]


async def test_lines_across_chunks_and_a_huge_line() -> None:
    big = b"x" * (3 * 1024 * 1024)
    data = b'{"a":1}\n' + big + b"\n\n" + b'{"b":2}'
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    assert await _collect(chunks) == [b'{"a":1}', big, b"", b'{"b":2}']


async def test_several_lines_in_one_chunk() -> None:
    assert await _collect([b"a\nb\nc", b"d\n"]) == [b"a", b"b", b"cd"]


async def test_a_line_over_the_limit_fails() -> None:
    with pytest.raises(ValueError):
        await _collect([b"y" * 100, b"y" * 100], limit=150)


def test_watch_event_decodes_lines_and_raises_error_events() -> None:
    from provider.kubeclient import ApiError, watch_event

    assert watch_event(b"  ") is None
    assert watch_event(b'{"type":"BOOKMARK","object":{"metadata":{"resourceVersion":"5"}}}') == {
        "type": "BOOKMARK",
        "object": {"metadata": {"resourceVersion": "5"}},
    }
    with pytest.raises(ApiError) as ei:
        watch_event(b'{"type":"ERROR","object":{"code":410,"reason":"Expired","message":"too old"}}')
    assert ei.value.gone and ei.value.reason == "Expired"
