"""Termination messages as kubelet's runtime manager reads them (sandbox/cri/termination_message.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import crilog
from provider.termination_log import create_termination_log, with_termination_log
from sandbox.cri import termination_message as tm
from sandbox.cri.termination_message import FileRead, log_tail_text, termination_message, wants_log_tail

P = "/dev/termination-log"
FB = tm.POLICY_FALLBACK_TO_LOGS
FILE = tm.POLICY_FILE


@pytest.mark.parametrize(
    ("path", "policy", "code", "reason", "read", "tail", "expected"),
    [
        # File policy: the file, whatever the exit code; never the logs
        (P, FILE, 0, "Completed", FileRead(b"done"), "LOG", "done"),
        (P, FILE, 1, "Error", FileRead(b""), "LOG", ""),
        (P, FILE, 1, "Error", FileRead(missing=True), "LOG", ""),
        # FallbackToLogsOnError: the file wins when it has content
        (P, FB, 1, "Error", FileRead(b"from file"), "LOG", "from file"),
        # ... empty or missing file + failure: the logs
        (P, FB, 1, "Error", FileRead(b""), "LOG", "LOG"),
        (P, FB, 137, "OOMKilled", FileRead(missing=True), "LOG", "LOG"),
        ("", FB, 2, "Error", FileRead(missing=True), "LOG", "LOG"),
        # ... but not on success, nor when the container could not run at all
        (P, FB, 0, "Completed", FileRead(b""), "LOG", ""),
        (P, FB, 128, "ContainerCannotRun", FileRead(b""), "LOG", ""),
        # an error reading the file is the message, no fallback
        (
            P,
            FB,
            1,
            "Error",
            FileRead(error="Error on reading termination log x: boom"),
            "LOG",
            "Error on reading termination log x: boom",
        ),
        # no path at all, File policy: nothing
        ("", FILE, 1, "Error", FileRead(missing=True), "LOG", ""),
    ],
)
def test_message_rules(
    path: str, policy: str, code: int, reason: str, read: FileRead, tail: str, expected: str
) -> None:
    assert termination_message("", path, policy, code, reason, read, tail) == expected


def test_appended_to_the_runtime_message() -> None:
    assert termination_message("rt", P, FILE, 1, "Error", FileRead(b"app"), "") == "rt: app"
    assert termination_message("rt", P, FILE, 1, "Error", FileRead(b""), "") == "rt"


def test_file_is_bounded_to_its_last_4096_bytes_and_decoded_leniently() -> None:
    data = b"a" * 5000 + b"END"
    msg = termination_message("", P, FILE, 0, "Completed", FileRead(data), "")
    assert len(msg) == 4096 and msg.endswith("END")
    assert termination_message("", P, FILE, 0, "Completed", FileRead(b"\xff ok"), "") == "\ufffd ok"


def test_log_tail_last_80_lines_last_2048_bytes() -> None:
    lines = [(f"line {i}".encode(), True) for i in range(100)]
    text = log_tail_text(lines)
    assert text.startswith("line 20\n") and text.endswith("line 99\n")
    big = [(b"x" * 100, True)] * 30 + [(b"tail", False)]
    text = log_tail_text(big)
    assert len(text.encode()) == 2048 and text.endswith("x\ntail")


@given(
    policy=st.sampled_from([FILE, FB, "Other"]),
    code=st.integers(0, 255),
    reason=st.sampled_from(["Completed", "Error", "OOMKilled", "ContainerCannotRun", "StartError"]),
    data=st.binary(max_size=64),
    missing=st.booleans(),
    tail=st.text(max_size=20),
)
def test_log_tail_used_only_on_fallback_failure_with_no_file_content(
    policy: str, code: int, reason: str, data: bytes, missing: bool, tail: str
) -> None:
    read = FileRead(missing=True) if missing else FileRead(data)
    use = wants_log_tail(P, policy, code, reason, read)
    assert use == (policy == FB and code != 0 and reason != "ContainerCannotRun" and (missing or not data))
    msg = termination_message("", P, policy, code, reason, read, tail)
    if use:
        assert msg == tail
    elif not missing:
        assert msg == data.decode("utf-8", "replace")
    else:
        assert msg == ""


@given(st.lists(st.tuples(st.binary(max_size=60), st.booleans()), max_size=120))
def test_log_tail_bounds(lines: list[tuple[bytes, bool]]) -> None:
    text = log_tail_text(lines)
    full = b"".join(c + b"\n" if ok else c for c, ok in lines[-80:])
    assert text == full[-2048:].decode("utf-8", "replace")


def test_read_message_from_file_and_from_the_cri_log(tmp_path: Path) -> None:
    log = tmp_path / "0.log"
    log.write_bytes(b"".join(crilog.encode_text(f"out {i}\n", timestamp_ns=10**18 + i) for i in range(90)))
    f = tmp_path / "term"
    f.write_bytes(b"")
    mounts = {P: str(f)}
    msg = tm.read_message("", P, FB, 1, "Error", mounts, str(log))
    assert msg.startswith("out 10\n") and msg.endswith("out 89\n")
    f.write_bytes(b"written by the app")
    assert tm.read_message("", P, FB, 1, "Error", mounts, str(log)) == "written by the app"
    assert tm.read_message("", P, FB, 1, "Error", {}, str(log)).endswith("out 89\n")  # no mount
    assert tm.read_message("", P, FILE, 1, "Error", {P: str(tmp_path / "nope")}, str(log)) == ""
    err = tm.read_message("", P, FB, 1, "Error", {}, str(tmp_path / "missing.log"))
    assert err.startswith("Error on reading termination message from logs:")


def test_termination_log_file_per_instance(tmp_path: Path) -> None:
    a = create_termination_log(tmp_path, "uid-1", "app", P)
    b = create_termination_log(tmp_path, "uid-1", "app", P)
    assert a.container_path == P and a.host_path != b.host_path
    pa = Path(a.host_path)
    assert pa.parent == tmp_path / "uid-1" / "containers" / "app"
    assert pa.read_bytes() == b"" and pa.stat().st_mode & 0o777 == 0o666
    assert with_termination_log([], a) == [a] and with_termination_log([b], None) == [b]
