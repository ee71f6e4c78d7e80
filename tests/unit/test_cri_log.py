"""CRI log format: writer, parser (partial joins, garbage, truncation), tail offsets, fuzzing."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.crilog import (
    MAX_FRAGMENT_BYTES,
    CRILogParser,
    CRILogWriter,
    LogRecord,
    container_log_path,
    encode_line,
    encode_text,
    format_timestamp,
    parse_bytes,
    parse_line,
    parse_timestamp,
    tail_offset,
)

pytestmark = pytest.mark.unit

TS = 1_700_000_000_123_456_789


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (TS, "2023-11-14T22:13:20.123456789Z"),
        (1_700_000_000_000_000_000, "2023-11-14T22:13:20Z"),
        (1_700_000_000_100_000_000, "2023-11-14T22:13:20.1Z"),
        (0, "1970-01-01T00:00:00Z"),
    ],
)
def test_format_timestamp_like_go_rfc3339nano(ns: int, text: str) -> None:
    assert format_timestamp(ns) == text
    assert parse_timestamp(text) == ns


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("2023-11-14T23:13:20.5+01:00", 1_700_000_000_500_000_000),
        ("2023-11-14T21:13:20-01:00", 1_700_000_000_000_000_000),
        ("2023-11-14t22:13:20z", 1_700_000_000_000_000_000),
    ],
)
def test_parse_timestamp_offsets(text: str, ns: int) -> None:
    assert parse_timestamp(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "2023-13-01T00:00:00Z",
        "2023-02-30T00:00:00Z",
        "2023-01-01T24:00:00Z",
        "2023-01-01 00:00:00Z",
        "2023-01-01T00:00:00",
        "2023-01-01T00:00:00.Z",
        "2023-01-01T00:00:00.1234567890Z",
        "2023-01-01T00:00:00+25:00",
    ],
)
def test_parse_timestamp_rejects(text: str) -> None:
    assert parse_timestamp(text) is None


def test_parse_line() -> None:
    line = parse_line(b"2023-11-14T22:13:20.1Z stderr P:x some content ")
    assert line is not None
    assert (line.stream, line.partial, line.content) == ("stderr", True, b"some content ")
    assert line.timestamp == b"2023-11-14T22:13:20.1Z"
    empty = parse_line(b"2023-11-14T22:13:20Z stdout F ")
    assert empty is not None and empty.content == b"" and not empty.partial
    for bad in [
        b"",
        b"garbage",
        b"2023-11-14T22:13:20Z stdout F",
        b"2023-11-14T22:13:20Z stdin F x",
        b"notatime stdout F x",
        b"2023-11-14T22:13:20Z stdout",
    ]:
        assert parse_line(bad) is None, bad


def test_encode_text_splits_long_lines_and_open_tail() -> None:
    data = encode_text("a\n" + "x" * (MAX_FRAGMENT_BYTES * 2 + 5) + "\ntail", timestamp_ns=TS)
    lines = data.split(b"\n")[:-1]
    tags = [parse_line(raw).partial for raw in lines]  # type: ignore[union-attr]
    assert tags == [False, True, True, False, True]
    recs = parse_bytes(data)
    assert [len(r.content) for r in recs] == [1, MAX_FRAGMENT_BYTES * 2 + 5, 4]
    assert [r.complete for r in recs] == [True, True, False]
    assert encode_line(TS, "stdout", b"hi") == b"2023-11-14T22:13:20.123456789Z stdout F hi\n"


def test_parser_joins_partials_per_stream_and_keeps_first_timestamp() -> None:
    data = (
        encode_line(1_000_000_000, "stdout", b"hel", partial=True)
        + encode_line(2_000_000_000, "stderr", b"E", partial=False)
        + encode_line(3_000_000_000, "stdout", b"lo", partial=False)
    )
    recs = parse_bytes(data)
    assert [(r.stream, r.content, r.timestamp_ns) for r in recs] == [
        ("stderr", b"E", 2_000_000_000),
        ("stdout", b"hello", 1_000_000_000),
    ]
    assert recs[1].render(timestamps=True) == b"1970-01-01T00:00:01Z hello\n"
    assert recs[1].render(timestamps=False) == b"hello\n"


def test_parser_skips_garbage_and_handles_split_feeds() -> None:
    good = encode_line(TS, "stdout", b"one") + b"garbage line\n\n" + encode_line(TS, "stdout", b"two")
    parser = CRILogParser()
    out: list[LogRecord] = []
    for i in range(len(good)):
        out += parser.feed(good[i : i + 1])
    out += parser.finish()
    assert [r.content for r in out] == [b"one", b"two"]
    assert parser.invalid_lines == 1


def test_truncated_last_line_is_parsed_at_finish() -> None:
    data = encode_line(TS, "stdout", b"one") + b"2023-11-14T22:13:20Z stdout F trunc"
    assert [r.content for r in parse_bytes(data)] == [b"one", b"trunc"]


def test_parser_bounds_memory_on_huge_lines() -> None:
    parser = CRILogParser(max_line_bytes=100, max_raw_line_bytes=200)
    out = parser.feed(b"x" * 1000)  # a garbage line with no newline yet
    assert out == [] and parser.buffered_bytes == 0
    out = parser.feed(b"y" * 1000 + b"\n" + encode_line(TS, "stdout", b"ok"))
    assert [r.content for r in out] == [b"ok"]
    # Partial fragments beyond max_line_bytes are emitted in pieces that render to the same bytes.
    frags = b"".join(encode_line(TS, "stdout", b"z" * 60, partial=True) for _ in range(5))
    frags += encode_line(TS, "stdout", b"end")
    out = parser.feed(frags) + parser.finish()
    assert max(parser.buffered_bytes, 0) == 0
    assert b"".join(r.render(timestamps=False) for r in out) == b"z" * 300 + b"end\n"
    rendered_ts = b"".join(r.render(timestamps=True) for r in out)
    assert rendered_ts.count(b"2023-11-14T22:13:20.123456789Z") == 1


def test_writer(tmp_path: Path) -> None:
    path = container_log_path(tmp_path, "ns", "p", "uid", "c", 2)
    assert path.endswith("ns_p_uid/c/2.log")
    w = CRILogWriter(path)
    w.create()
    w.write("hello\n")
    w.write(b"err\n", "stderr")
    assert [(r.stream, r.content) for r in parse_bytes(Path(path).read_bytes())] == [
        ("stdout", b"hello"),
        ("stderr", b"err"),
    ]
    # created as open(path, "ab") would: mode 0666 less the umask; the next attempt's file in the
    # directory that exists now, and created again it is not truncated
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
    again = CRILogWriter(container_log_path(tmp_path, "ns", "p", "uid", "c", 3))
    again.create()
    assert os.path.getsize(again.path) == 0
    w.create()
    assert len(parse_bytes(Path(path).read_bytes())) == 2


def _log(lines: list[tuple[str, bool]]) -> bytes:
    return b"".join(encode_line(TS, "stdout", c.encode(), partial=p) for c, p in lines)


@pytest.mark.parametrize("block", [7, 64, 65536])
def test_tail_offset_counts_logical_lines(block: int) -> None:
    data = _log([("a", False), ("b1", True), ("b2", False), ("c", False)])

    def tail(n: int) -> list[bytes]:
        off = tail_offset(io.BytesIO(data), n, block_size=block)
        return [r.content for r in parse_bytes(data[off:])]

    assert tail(0) == []
    assert tail(1) == [b"c"]
    assert tail(2) == [b"b1b2", b"c"]
    assert tail(3) == [b"a", b"b1b2", b"c"]
    assert tail(10) == [b"a", b"b1b2", b"c"]
    assert tail(-1) == [b"a", b"b1b2", b"c"]
    assert tail_offset(io.BytesIO(b""), 5) == 0
    # An open line at the end (no F yet, no final newline) counts as one line.
    open_tail = data + encode_line(TS, "stdout", b"d", partial=True)[:-1]
    off = tail_offset(io.BytesIO(open_tail), 1, block_size=block)
    assert [r.content for r in parse_bytes(open_tail[off:])] == [b"d"]


lines_strategy = st.lists(
    st.tuples(
        st.text(alphabet=st.characters(blacklist_characters="\n\r", codec="utf-8"), max_size=30),
        st.booleans(),
    ),
    max_size=30,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=lines_strategy,
    n=st.integers(min_value=0, max_value=40),
    block=st.integers(min_value=1, max_value=300),
)
def test_tail_matches_reference(lines: list[tuple[str, bool]], n: int, block: int) -> None:
    # Reference: logical lines are runs of P fragments closed by an F (or the end).
    data = _log(lines)
    logical: list[bytes] = []
    cur: list[bytes] = []
    for content, partial in lines:
        cur.append(content.encode())
        if not partial:
            logical.append(b"".join(cur))
            cur = []
    if cur:
        logical.append(b"".join(cur))
    off = tail_offset(io.BytesIO(data), n, block_size=block)
    got = [r.content for r in parse_bytes(data[off:])]
    assert got == (logical[-n:] if n else [])


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(st.binary(max_size=300), max_size=20),
    good=st.lists(
        st.tuples(st.binary(max_size=50).filter(lambda b: b"\n" not in b), st.booleans()), max_size=10
    ),
)
def test_fuzz_parser_never_crashes_and_stays_bounded(
    chunks: list[bytes], good: list[tuple[bytes, bool]]
) -> None:
    parser = CRILogParser(max_line_bytes=128, max_raw_line_bytes=256)
    mixed = b"".join(chunks) + b"".join(encode_line(TS, "stderr", c, p) for c, p in good)
    total = 0
    for i in range(0, len(mixed), 37):
        for rec in parser.feed(mixed[i : i + 37]):
            assert rec.stream in ("stdout", "stderr")
            assert len(rec.content) <= 128 + 50
            total += 1
        assert parser.buffered_bytes <= 256 + 37 + 128 + 50
    parser.finish()
    assert parser.buffered_bytes == 0


@settings(max_examples=200)
@given(data=st.binary(max_size=2000), n=st.integers(min_value=-1, max_value=50), block=st.integers(1, 100))
def test_fuzz_tail_offset_on_garbage(data: bytes, n: int, block: int) -> None:
    off = tail_offset(io.BytesIO(data), n, block_size=block)
    assert 0 <= off <= len(data)
    assert off == 0 or off == len(data) or data[off - 1 : off] == b"\n"


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_fuzz_parse_timestamp(text: str) -> None:
    parse_timestamp(text)
