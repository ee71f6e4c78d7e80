"""Which HTTP/2 streams (gRPC calls) on a connection still wait for the server's last frame.

Why: the CRI relay keeps containerd's connection open after warmlet dies so that calls in flight
finish. Knowing when the last of them is answered lets it close right then — instead of after a
fixed linger — and lets the next warmlet wait for exactly that before it adopts the runtime's
state. Only frame headers are read (RFC 9113 §4.1); payloads are skipped, nothing is decoded.

A stream opens with the client's HEADERS and is done with the server's END_STREAM flag (DATA or
HEADERS, i.e. gRPC's trailers) or an RST_STREAM from either side; once the client is gone, a
request it never finished (no END_STREAM of its own) will never be answered. Bytes that do not start with
the HTTP/2 client preface make the tracker ``valid = False``: the caller cannot know, and falls
back to waiting its full linger.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
DATA, HEADERS, RST_STREAM = 0x0, 0x1, 0x3
END_STREAM = 0x1


@dataclass
class FrameHeaders:
    """Incremental reader of one direction's frame headers (type, flags, stream id)."""

    preface_left: int = 0
    valid: bool = True
    _head: bytes = b""
    _skip: int = 0

    def feed(self, data: bytes) -> list[tuple[int, int, int]]:
        out: list[tuple[int, int, int]] = []
        i, n = 0, len(data)
        if not self.valid:
            return out
        if self.preface_left:
            take = min(self.preface_left, n)
            at = len(PREFACE) - self.preface_left
            if data[:take] != PREFACE[at : at + take]:
                self.valid = False
                return out
            self.preface_left -= take
            i = take
        while i < n:
            if self._skip:
                k = min(self._skip, n - i)
                self._skip -= k
                i += k
                continue
            chunk = data[i : i + FRAME_HEADER - len(self._head)]
            self._head += chunk
            i += len(chunk)
            if len(self._head) == FRAME_HEADER:
                h, self._head = self._head, b""
                self._skip = int.from_bytes(h[0:3], "big")
                out.append((h[3], h[4], int.from_bytes(h[5:9], "big") & 0x7FFFFFFF))
        return out


@dataclass
class StreamTracker:
    """Open request streams of one client connection, from both directions' bytes."""

    open: set[int] = field(default_factory=set)
    sent: set[int] = field(default_factory=set)  # open streams whose request is complete
    _client: FrameHeaders = field(default_factory=lambda: FrameHeaders(preface_left=len(PREFACE)))
    _server: FrameHeaders = field(default_factory=FrameHeaders)

    @property
    def valid(self) -> bool:
        return self._client.valid and self._server.valid

    def from_client(self, data: bytes) -> None:
        for ftype, flags, sid in self._client.feed(data):
            if ftype == HEADERS and sid:
                self.open.add(sid)
            if ftype == RST_STREAM:
                self.open.discard(sid)
                self.sent.discard(sid)
            elif ftype in (DATA, HEADERS) and flags & END_STREAM and sid in self.open:
                self.sent.add(sid)

    def client_gone(self) -> None:
        """The client closed: a request it never finished will never be answered, forget it."""
        self.open &= self.sent

    def from_server(self, data: bytes) -> None:
        for ftype, flags, sid in self._server.feed(data):
            if ftype == RST_STREAM or (ftype in (DATA, HEADERS) and flags & END_STREAM):
                self.open.discard(sid)
                self.sent.discard(sid)
