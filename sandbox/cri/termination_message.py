"""A finished container's termination message, the way kubelet's runtime manager reads it.

kubelet mounts a fresh empty host file at the container's ``terminationMessagePath`` for every
container instance (``makeMounts``) and, once the container exited, reads the LAST 4096 bytes
of that file (``getTerminationMessage``). With ``terminationMessagePolicy:
FallbackToLogsOnError`` an exit code other than 0 (and a reason other than
``ContainerCannotRun``: no process, no logs) and an empty or missing file, the message is the
tail of the container's log instead: its last 80 lines, of which the last 2048 bytes. The
message is appended to the runtime's own message (``"<runtime message>: <message>"``).

The decisions are pure (:func:`wants_log_tail`, :func:`termination_message`,
:func:`log_tail_text`); :func:`read_message` is the file I/O at the edge (run it in a thread).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from common import crilog

MAX_MESSAGE_BYTES = 4 * 1024  # kubelet's MaxContainerTerminationMessageLength
MAX_LOG_TAIL_BYTES = 2 * 1024  # MaxContainerTerminationMessageLogLength
MAX_LOG_TAIL_LINES = 80  # MaxContainerTerminationMessageLogLines

POLICY_FILE = "File"
POLICY_FALLBACK_TO_LOGS = "FallbackToLogsOnError"
REASON_CANNOT_RUN = "ContainerCannotRun"


@dataclass(frozen=True)
class FileRead:
    """What reading the termination-message file gave: its (last, bounded) bytes, or that it
    was not there (no mount at the path, or no file), or an error other than not found."""

    data: bytes = b""
    missing: bool = False
    error: str = ""


def fallback_to_logs(policy: str, exit_code: int, reason: str) -> bool:
    """FallbackToLogsOnError applies: a failed container that did run (it may have logs)."""
    return policy == POLICY_FALLBACK_TO_LOGS and exit_code != 0 and reason != REASON_CANNOT_RUN


def wants_log_tail(path: str, policy: str, exit_code: int, reason: str, read: FileRead) -> bool:
    """Whether the message comes from the log tail (kubelet's ``checkLogs``)."""
    fallback = fallback_to_logs(policy, exit_code, reason)
    if not path or read.missing:
        return fallback
    if read.error:
        return False
    return fallback and not read.data


def termination_message(
    runtime_message: str,
    path: str,
    policy: str,
    exit_code: int,
    reason: str,
    read: FileRead,
    log_tail: str = "",
) -> str:
    """The container's terminated ``message``: the runtime's message, then the termination
    message (from the file, an error reading it, or ``log_tail`` when :func:`wants_log_tail`)."""
    if wants_log_tail(path, policy, exit_code, reason, read):
        own = log_tail
    elif not path or read.missing:
        own = ""
    elif read.error:
        own = read.error
    else:
        own = read.data[-MAX_MESSAGE_BYTES:].decode("utf-8", "replace")
    if not own:
        return runtime_message
    return f"{runtime_message}: {own}" if runtime_message else own


def log_tail_text(contents: Iterable[tuple[bytes, bool]]) -> str:
    """The log tail message from the logical lines (content, complete) of the LAST
    ``MAX_LOG_TAIL_LINES`` lines, oldest first: each rendered as kubelet writes it (a complete
    line with its newline), then the last ``MAX_LOG_TAIL_BYTES`` bytes of the whole."""
    lines = list(contents)[-MAX_LOG_TAIL_LINES:]
    data = b"".join(c + b"\n" if complete else c for c, complete in lines)
    return data[-MAX_LOG_TAIL_BYTES:].decode("utf-8", "replace")


# ---------------------------------------------------------------------------- I/O (edges)


def read_file(host_path: str | None) -> FileRead:
    """The last ``MAX_MESSAGE_BYTES`` bytes of the termination-message file (kubelet's
    ``tail.ReadAtMost``); ``host_path`` None: no mount at the termination message path."""
    if host_path is None:
        return FileRead(missing=True)
    try:
        with open(host_path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - MAX_MESSAGE_BYTES))
            return FileRead(data=f.read())
    except FileNotFoundError:
        return FileRead(missing=True)
    except OSError as e:
        return FileRead(error=f"Error on reading termination log {host_path}: {e}")


def read_log_tail(log_path: str) -> str:
    """The last lines of a CRI log file as the fallback message (kubelet's
    ``readLastStringFromContainerLogs``); an unreadable log gives kubelet's error text."""
    try:
        with open(log_path, "rb") as f:
            start = crilog.tail_offset(f, MAX_LOG_TAIL_LINES)
            f.seek(start)
            data = f.read()
    except OSError as e:
        return f"Error on reading termination message from logs: {e}"
    records = crilog.parse_bytes(data)
    return log_tail_text((r.content, r.complete) for r in records)


def read_message(
    runtime_message: str,
    path: str,
    policy: str,
    exit_code: int,
    reason: str,
    mounts: dict[str, str],
    log_path: str,
) -> str:
    """Read what is needed and return the terminated message (blocking: run in a thread).
    ``mounts``: container path -> host path of the container's mounts, as the runtime reports."""
    read = read_file(mounts.get(path)) if path else FileRead(missing=True)
    tail = ""
    if wants_log_tail(path, policy, exit_code, reason, read):
        tail = read_log_tail(log_path) if log_path else ""
    return termination_message(runtime_message, path, policy, exit_code, reason, read, tail)
