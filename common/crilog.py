"""CRI container log files: the on-disk format kubelet reads for ``kubectl logs``.

One physical line per write: ``<RFC3339Nano timestamp> <stdout|stderr> <P|F>[:tags] <content>``.
``P`` marks a partial line (the runtime split a long line), ``F`` the final fragment.
Both backends write this format (the simulated one directly, containerd on its own) and
the kubelet API reads it, so the writer and a parser robust to garbage and truncation live
here, next to each other, with no Kubernetes or gRPC types.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import time
from dataclasses import dataclass
from typing import BinaryIO

STDOUT = "stdout"
STDERR = "stderr"
TAG_PARTIAL = b"P"
TAG_FULL = b"F"

# containerd splits lines longer than this into P fragments; we do the same.
MAX_FRAGMENT_BYTES = 16 * 1024
# A physical line longer than this cannot come from a CRI runtime: it is garbage.
MAX_RAW_LINE_BYTES = 1024 * 1024
# The header (timestamp, stream, tag) of a valid line fits in this many bytes.
HEADER_MAX_BYTES = 80

_EPOCH_ORDINAL = _dt.date(1970, 1, 1).toordinal()
_TS_RE = re.compile(
    rb"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$"
)


def format_timestamp(ns: int) -> str:
    """RFC3339Nano in UTC with trailing zeros trimmed, as Go's time.RFC3339Nano prints it."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        return f"{base}.{frac:09d}".rstrip("0") + "Z"
    return base + "Z"


_day_cache: dict[bytes, int] = {}


def parse_timestamp(raw: bytes | str) -> int | None:
    """Parse an RFC3339(Nano) timestamp into Unix nanoseconds; None if it is not one."""
    b = raw.encode() if isinstance(raw, str) else raw
    m = _TS_RE.match(b)
    if m is None:
        return None
    y, mo, d, hh, mm, ss, frac, z, sign, oh, om = m.groups()
    date_key = b[:10]
    days = _day_cache.get(date_key)
    if days is None:
        try:
            days = _dt.date(int(y), int(mo), int(d)).toordinal() - _EPOCH_ORDINAL
        except ValueError:
            return None
        if len(_day_cache) < 4096:
            _day_cache[date_key] = days
    h, mi, s = int(hh), int(mm), int(ss)
    if h > 23 or mi > 59 or s > 60:
        return None
    secs = days * 86400 + h * 3600 + mi * 60 + s
    if z is None:
        off_h, off_m = int(oh), int(om)
        if off_h > 23 or off_m > 59:
            return None
        offset = off_h * 3600 + off_m * 60
        secs = secs - offset if sign == b"+" else secs + offset
    nanos = int(frac.ljust(9, b"0")) if frac else 0
    return secs * 1_000_000_000 + nanos


@dataclass(frozen=True, slots=True)
class LogLine:
    """One physical line of a CRI log file."""

    timestamp: bytes  # as written (kubelet prints it back unchanged)
    timestamp_ns: int
    stream: str
    partial: bool
    content: bytes  # without the trailing newline


def parse_line(line: bytes) -> LogLine | None:
    """Parse one physical line (without its newline) like kubelet's parseCRILog; None if invalid."""
    i = line.find(b" ")
    if i < 0:
        return None
    ts_raw = line[:i]
    ts = parse_timestamp(ts_raw)
    if ts is None:
        return None
    j = line.find(b" ", i + 1)
    if j < 0:
        return None
    stream_b = line[i + 1 : j]
    if stream_b == b"stdout":
        stream = STDOUT
    elif stream_b == b"stderr":
        stream = STDERR
    else:
        return None
    k = line.find(b" ", j + 1)
    if k < 0:
        return None
    tag = line[j + 1 : k].split(b":", 1)[0]
    return LogLine(ts_raw, ts, stream, tag == TAG_PARTIAL, line[k + 1 :])


def encode_line(timestamp_ns: int, stream: str, content: bytes, partial: bool = False) -> bytes:
    """One physical CRI log line, newline included."""
    tag = "P" if partial else "F"
    return f"{format_timestamp(timestamp_ns)} {stream} {tag} ".encode() + content + b"\n"


def encode_text(text: str | bytes, stream: str = STDOUT, timestamp_ns: int | None = None) -> bytes:
    """Encode program output (possibly several lines) as CRI lines, splitting long lines into P/F.

    A trailing fragment without a newline is written as a partial line, as runtimes do when
    a process exits mid-line.
    """
    data = text.encode() if isinstance(text, str) else text
    ts = time.time_ns() if timestamp_ns is None else timestamp_ns
    out: list[bytes] = []
    lines = data.split(b"\n")
    ends_with_newline = data.endswith(b"\n")
    if ends_with_newline:
        lines.pop()
    for n, line in enumerate(lines):
        last_is_open = n == len(lines) - 1 and not ends_with_newline
        while len(line) > MAX_FRAGMENT_BYTES:
            out.append(encode_line(ts, stream, line[:MAX_FRAGMENT_BYTES], partial=True))
            line = line[MAX_FRAGMENT_BYTES:]
        out.append(encode_line(ts, stream, line, partial=last_is_open))
    return b"".join(out)


_APPEND = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC  # as open(path, "ab")


class CRILogWriter:
    """Appends CRI lines to one container's log file (open-append-close: no fd per container)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self) -> None:
        """The (empty) file and its directory. Plain syscalls: a simulated node creates one per
        container, thousands a minute (``os.makedirs`` and a file object cost twice as much)."""
        parent = os.path.dirname(self.path)
        try:
            os.mkdir(parent)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(parent, exist_ok=True)
        os.close(os.open(self.path, _APPEND, 0o666))

    def write(self, text: str | bytes, stream: str = STDOUT, timestamp_ns: int | None = None) -> int:
        data = encode_text(text, stream, timestamp_ns)
        fd = os.open(self.path, _APPEND, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return len(data)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A logical log line: consecutive P fragments of one stream joined up to their F line.

    ``complete`` is False for the head of a line that is still open (at EOF, or cut because
    it grew beyond the parser's bound); ``continued`` is True for a record that carries on
    a line already emitted incomplete (so no timestamp prefix is printed again).
    """

    timestamp: bytes
    timestamp_ns: int
    stream: str
    content: bytes
    complete: bool = True
    continued: bool = False

    def render(self, timestamps: bool) -> bytes:
        """The bytes ``kubectl logs`` shows for this record."""
        body = self.content + b"\n" if self.complete else self.content
        if timestamps and not self.continued:
            return self.timestamp + b" " + body
        return body


class _Pending:
    __slots__ = ("continued", "parts", "size", "timestamp", "timestamp_ns")

    def __init__(self, line: LogLine, continued: bool) -> None:
        self.timestamp = line.timestamp
        self.timestamp_ns = line.timestamp_ns
        self.parts: list[bytes] = []
        self.size = 0
        self.continued = continued


class CRILogParser:
    """Streaming parser: feed bytes, get LogRecords; memory is bounded by ``max_line_bytes``.

    Invalid lines are counted in ``invalid_lines`` and skipped, as kubelet does; a physical
    line longer than ``max_raw_line_bytes`` is discarded up to its newline.
    """

    def __init__(
        self, max_line_bytes: int = MAX_RAW_LINE_BYTES, max_raw_line_bytes: int = MAX_RAW_LINE_BYTES
    ) -> None:
        self.max_line_bytes = max_line_bytes
        self.max_raw_line_bytes = max_raw_line_bytes
        self.invalid_lines = 0
        self._buf = b""
        self._discarding = False
        self._pending: dict[str, _Pending] = {}

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf) + sum(p.size for p in self._pending.values())

    def feed(self, data: bytes) -> list[LogRecord]:
        out: list[LogRecord] = []
        buf = self._buf + data if self._buf else data
        start = 0
        find = buf.find
        while True:
            nl = find(b"\n", start)
            if nl < 0:
                break
            if self._discarding:
                self._discarding = False
            else:
                self._physical(buf[start:nl], out)
            start = nl + 1
        rest = buf[start:]
        if len(rest) > self.max_raw_line_bytes:
            if not self._discarding:
                self.invalid_lines += 1
            self._discarding = True
            rest = b""
        self._buf = rest
        return out

    def feed_rendered(self, data: bytes, timestamps: bool, stream: str | None) -> bytes | None:
        """Fast path: the rendered bytes of ``data``'s complete lines if they are all plain F
        lines and no partial line is pending; None (nothing consumed) otherwise."""
        if self._pending or self._discarding:
            return None
        buf = self._buf + data if self._buf else data
        cut = buf.rfind(b"\n") + 1
        out = render_full_lines(buf[:cut], timestamps, stream)
        if out is None:
            return None
        rest = buf[cut:]
        if len(rest) > self.max_raw_line_bytes:
            self.invalid_lines += 1
            self._discarding = True
            rest = b""
        self._buf = rest
        return out

    def finish(self) -> list[LogRecord]:
        """End of input: parse a trailing line without newline and flush open partial lines."""
        out: list[LogRecord] = []
        if self._buf and not self._discarding:
            self._physical(self._buf, out)
        self._buf = b""
        self._discarding = False
        for stream in list(self._pending):
            rec = self._flush_pending(stream, complete=False)
            if rec is not None:
                out.append(rec)
        return out

    def _physical(self, raw: bytes, out: list[LogRecord]) -> None:
        line = parse_line(raw)
        if line is None:
            if raw:
                self.invalid_lines += 1
            return
        pending = self._pending.get(line.stream)
        if line.partial:
            if pending is None:
                pending = self._pending[line.stream] = _Pending(line, continued=False)
            pending.parts.append(line.content)
            pending.size += len(line.content)
            if pending.size >= self.max_line_bytes:
                rec = self._flush_pending(line.stream, complete=False)
                if rec is not None:
                    out.append(rec)
                # The rest of this logical line continues the record just emitted.
                self._pending[line.stream] = p = _Pending(line, continued=True)
                p.parts = []
            return
        if pending is None:
            out.append(LogRecord(line.timestamp, line.timestamp_ns, line.stream, line.content))
            return
        del self._pending[line.stream]
        pending.parts.append(line.content)
        out.append(
            LogRecord(
                pending.timestamp,
                pending.timestamp_ns,
                line.stream,
                b"".join(pending.parts),
                complete=True,
                continued=pending.continued,
            )
        )

    def _flush_pending(self, stream: str, complete: bool) -> LogRecord | None:
        p = self._pending.pop(stream, None)
        if p is None or (not p.parts and p.continued):
            return None
        return LogRecord(p.timestamp, p.timestamp_ns, stream, b"".join(p.parts), complete, p.continued)


_FAST_LINE = (
    rb"^(\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:[Zz]|[+-]\d\d:\d\d)) "
    rb"(%s) F(?::[^ \n]*)? ([^\n]*)\n"
)
_FAST_ANY = re.compile(_FAST_LINE % rb"stdout|stderr", re.M)
_FAST_STREAM = {
    STDOUT: (re.compile(_FAST_LINE % rb"stdout", re.M), re.compile(_FAST_LINE % rb"stderr", re.M)),
    STDERR: (re.compile(_FAST_LINE % rb"stderr", re.M), re.compile(_FAST_LINE % rb"stdout", re.M)),
}


def render_full_lines(lines: bytes, timestamps: bool, stream: str | None) -> bytes | None:
    """Render complete lines in one regex pass, or None if any line is partial or invalid.

    The fast path of log serving: when every line of a block is a well-formed F line, the
    output is a substitution done in C instead of a parse per line; anything else (P lines,
    garbage) returns None and the caller uses the streaming parser.
    """
    if not lines:
        return b""
    total = lines.count(b"\n")
    repl = rb"\1 \3\n" if timestamps else rb"\3\n"
    if stream is None:
        out, n = _FAST_ANY.subn(repl, lines)
        return out if n == total else None
    keep, drop = _FAST_STREAM[stream]
    kept, dropped = drop.subn(b"", lines)
    out, n = keep.subn(repl, kept)
    return out if n + dropped == total else None


def parse_bytes(data: bytes) -> list[LogRecord]:
    """Parse a whole log (convenience for tests and small files)."""
    parser = CRILogParser()
    return parser.feed(data) + parser.finish()


def _is_terminator(header: bytes) -> bool:
    """True unless the line is a valid partial (P) fragment: anything else ends a logical line."""
    parts = header.split(b" ", 3)
    if len(parts) < 4:
        return True
    return parts[2].split(b":", 1)[0] != TAG_PARTIAL


def tail_offset(f: BinaryIO, lines: int, block_size: int = 64 * 1024) -> int:
    """Byte offset where the last ``lines`` logical lines of an open log file begin.

    Scans backwards block by block (cheap on huge files). Partial fragments belong to the
    logical line their F line ends, so ``tailLines=1`` returns one whole line, not its last
    fragment. ``lines < 0`` means the whole file.
    """
    f.seek(0, os.SEEK_END)
    size = f.tell()
    if lines < 0 or size == 0:
        return 0
    if lines == 0:
        return size
    f.seek(size - 1)
    end = size - 1 if f.read(1) == b"\n" else size
    count = 0
    first = True
    prev_start = size
    pos = end
    after = b""  # bytes following `pos`, for headers that cross a block boundary
    while True:
        read_start = max(0, pos - block_size)
        f.seek(read_start)
        chunk = f.read(pos - read_start)
        data = chunk + after
        idx = len(chunk)
        while True:
            nl = chunk.rfind(b"\n", 0, idx)
            if nl < 0 and read_start > 0:
                break  # this line starts in an earlier block
            line_start = nl + 1  # 0 when nl == -1: the first line of the file
            header = data[line_start : line_start + HEADER_MAX_BYTES]
            if first or _is_terminator(header):
                if count == lines:
                    return prev_start
                count += 1
            first = False
            prev_start = read_start + line_start
            if nl < 0:
                return 0
            idx = nl
        after = data[:HEADER_MAX_BYTES]
        pos = read_start


def pod_log_dir(log_dir: str | os.PathLike[str], namespace: str, name: str, uid: str) -> str:
    """kubelet's per-pod log directory: ``<log_dir>/<namespace>_<name>_<uid>``."""
    return os.path.join(os.fspath(log_dir), f"{namespace}_{name}_{uid}")


def container_log_relpath(container: str, attempt: int) -> str:
    """A container log file relative to its pod's log directory (kubelet: ``<container>/<attempt>.log``)."""
    return os.path.join(container, f"{attempt}.log")


def container_log_path(
    log_dir: str | os.PathLike[str], namespace: str, name: str, uid: str, container: str, attempt: int
) -> str:
    """kubelet's container log file: ``<pod dir>/<container>/<attempt>.log``."""
    pod_dir = pod_log_dir(log_dir, namespace, name, uid)
    return os.path.join(pod_dir, container_log_relpath(container, attempt))
