"""HTTP/2 stream tracking of the CRI relay: which gRPC calls still wait for their answer."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from sandbox.cri.h2_streams import DATA, END_STREAM, HEADERS, PREFACE, RST_STREAM, StreamTracker

SETTINGS, PING, WINDOW_UPDATE = 0x4, 0x6, 0x8


def frame(ftype: int, sid: int, flags: int = 0, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def unary_call(sid: int) -> bytes:
    """What a gRPC client sends for one unary call: HEADERS, then the message with END_STREAM."""
    return frame(HEADERS, sid, 0x4, b"h" * 40) + frame(DATA, sid, END_STREAM, b"\0\0\0\0\5hello")


def unary_answer(sid: int, body: int = 30) -> bytes:
    """The server's answer: HEADERS, the message, trailers (HEADERS with END_STREAM)."""
    return (
        frame(HEADERS, sid, 0x4, b"h" * 20)
        + frame(DATA, sid, 0, b"m" * body)
        + frame(HEADERS, sid, 0x5, b"t" * 9)
    )


def test_a_call_is_open_until_its_trailers() -> None:
    t = StreamTracker()
    t.from_client(PREFACE + frame(SETTINGS, 0) + unary_call(1))
    t.from_server(frame(SETTINGS, 0) + frame(SETTINGS, 0, 0x1))
    assert t.open == {1}
    answer = unary_answer(1)
    t.from_server(answer[:-18])  # headers and message, not yet the trailers
    assert t.open == {1}
    t.from_server(answer[-18:])
    assert t.open == set() and t.valid


def test_interleaved_calls_resets_and_connection_frames() -> None:
    t = StreamTracker()
    t.from_client(PREFACE + unary_call(1) + unary_call(3) + unary_call(5) + frame(PING, 0, 0, b"8bytes!!"))
    assert t.open == {1, 3, 5}
    t.from_server(
        frame(WINDOW_UPDATE, 0, 0, b"\0\0\1\0") + unary_answer(3) + frame(RST_STREAM, 5, 0, b"\0\0\0\x08")
    )
    assert t.open == {1}
    t.from_client(frame(RST_STREAM, 1, 0, b"\0\0\0\x08"))  # the client cancels the call
    assert t.open == set()
    t.from_server(frame(HEADERS, 7, END_STREAM | 0x4))  # a stream the client never opened
    assert t.open == set()


def test_a_trailers_only_answer_ends_the_call() -> None:
    t = StreamTracker()
    t.from_client(PREFACE + unary_call(1))
    t.from_server(frame(HEADERS, 1, END_STREAM | 0x4, b"grpc-status: 5"))
    assert t.open == set()


def test_not_http2_is_invalid() -> None:
    t = StreamTracker()
    t.from_client(b"GET / HTTP/1.1\r\n\r\n")
    assert not t.valid
    t.from_client(unary_call(1))
    assert t.open == set()  # nothing is read once invalid


@given(
    cuts_client=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    cuts_server=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
    body=st.integers(min_value=0, max_value=4000),
)
def test_any_chunking_gives_the_same_answer(
    cuts_client: list[int], cuts_server: list[int], body: int
) -> None:
    client = PREFACE + unary_call(1) + unary_call(3)
    server = frame(SETTINGS, 0) + unary_answer(1, body) + unary_answer(3, body)[:-10]  # 3: trailers cut

    def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
        at = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
        return [data[a:b] for a, b in itertools.pairwise(at)]

    t = StreamTracker()
    for c in chunks(client, cuts_client):
        t.from_client(c)
    assert t.open == {1, 3}
    for c in chunks(server, cuts_server):
        t.from_server(c)
    assert t.open == {3} and t.valid


def test_a_request_cut_off_by_the_clients_death_is_not_waited_for() -> None:
    t = StreamTracker()
    t.from_client(PREFACE + unary_call(1) + frame(HEADERS, 3, 0x4, b"h" * 40) + frame(DATA, 3, 0, b"part"))
    assert t.open == {1, 3}
    t.client_gone()  # 3 never got its END_STREAM: the server waits for the rest, forever
    assert t.open == {1}
    t.from_server(unary_answer(1))
    assert t.open == set() and t.sent == set()
