"""Interactive access end to end: the real kubectl, through the real API server, to warmlet's kubelet
API, to containerd's streaming server. exec with and without a tty (a real pty: terminal size
carried), stdin piped, exit codes, attach, port-forward of a 100 MB file, cp both ways, an exec
whose client is killed leaves nothing behind (each of two concurrent sessions of one command ends
only its own process; what a finished exec left in the background stays, as on kubelet),
unauthenticated/unauthorized upgrades refused, and
the simulated backend's answer. Every test failed before: warmlet answered 501 to all of them.

One module, one CRI node and one set of pods shared by all tests (a bed session is expensive)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pty
import signal
import socket
import ssl
import struct
import termios
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from e2e_helpers import E2E, pod_spec, wait_for

from provider.kubeclient import KubeClient
from testbed.testing import node_config
from testbed.util import bin_dir

JSON = dict[str, Any]
KUBECTL = str(bin_dir() / "kubectl")


class Bed:
    def __init__(self, e2e: E2E, node: str, ns: str) -> None:
        self.e2e, self.node, self.ns = e2e, node, ns

    async def kubectl(
        self, *args: str, stdin: bytes | None = None, within: float = 120
    ) -> tuple[int, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            KUBECTL,
            f"--kubeconfig={self.e2e.kubeconfig}",
            "-n",
            self.ns,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), within)
        assert proc.returncode is not None
        return proc.returncode, out, err

    async def sh(self, pod: str, script: str) -> str:
        rc, out, err = await self.kubectl("exec", pod, "--", "sh", "-c", script)
        assert rc == 0, (script, rc, out, err)
        return out.decode()


def pod(bed_node: str, name: str, command: str, image: str, **container: Any) -> JSON:
    spec = pod_spec(bed_node, command, image, restart="Never", terminationGracePeriodSeconds=1)
    spec["containers"][0].update(container)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def read_pty(master: int) -> bytes:
    """Everything written to a pty until every writer of it is gone."""
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: every writer of the pty is gone
            return b"".join(chunks)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


@pytest.fixture(scope="module")
async def bed(testbed: Any, kubeconfig: Path, cri_endpoint: str, tmp_path_factory: Any) -> AsyncIterator[Bed]:
    client = await KubeClient.from_kubeconfig(str(kubeconfig))
    e2e = E2E(client, kubeconfig, tmp_path_factory.mktemp("interactive"), testbed, cri_endpoint)
    try:
        cfg = e2e.config()
        cfg.server.authorization_mode = "Webhook"  # as a real node: SubjectAccessReviews
        await e2e.start(cfg)
        ns = await e2e.namespace("interactive")
        b = Bed(e2e, cfg.node.name, ns)
        serve = (
            "mkdir -p /www && dd if=/dev/urandom of=/www/big.tmp bs=1M count=100 2>/dev/null && "
            "mv /www/big.tmp /www/big && exec httpd -f -p 8080 -h /www"
        )
        pods = [
            pod(b.node, "shell", "sleep 3600", e2e.busybox),
            pod(b.node, "web", serve, e2e.busybox),
            pod(
                b.node,
                "reader",
                "while read line; do echo got:$line; done; sleep 3600",
                e2e.busybox,
                stdin=True,
            ),
        ]
        for p in pods:
            await client.post(f"/api/v1/namespaces/{ns}/pods", p)

        async def running() -> bool:
            phases = [(await e2e.pod(ns, p["metadata"]["name"]))["status"].get("phase") for p in pods]
            return all(ph == "Running" for ph in phases)

        await wait_for(running, 180, 0.5, "interactive pods running")
        yield b
    finally:
        await e2e.cleanup()
        await client.close()


async def test_exec_output_stdin_and_exit_code(bed: Bed) -> None:
    rc, out, err = await bed.kubectl("exec", "shell", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert rc == 7 and out == b"out\n" and b"err\n" in err and b"exit code 7" in err, (rc, out, err)
    rc, out, err = await bed.kubectl("exec", "-i", "shell", "--", "cat", stdin=b"hi\n")
    assert (rc, out) == (0, b"hi\n"), err
    # -it with stdin from a pipe: kubectl falls back to no tty (its own rule), the session works
    rc, out, err = await bed.kubectl(
        "exec", "-it", "shell", "--", "sh", "-c", "cat; echo done", stdin=b"abc\n"
    )
    assert (rc, out) == (0, b"abc\ndone\n"), err


async def test_exec_with_a_real_tty_carries_the_terminal_size(bed: Bed) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={bed.e2e.kubeconfig}",
        "-n",
        bed.ns,
        "exec",
        "-it",
        "shell",
        "--",
        "sh",
        "-c",
        "tty; sleep 2; stty size; exit 3",
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)

    try:
        output = await asyncio.wait_for(asyncio.to_thread(read_pty, master), 60)
        rc = await asyncio.wait_for(proc.wait(), 30)
    finally:
        os.close(master)
    text = output.decode(errors="replace")
    assert "/dev/pts/" in text and "33 101" in text and rc == 3, (rc, text)


async def test_attach_to_a_container_reading_stdin(bed: Bed) -> None:
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={bed.e2e.kubeconfig}",
        "-n",
        bed.ns,
        "attach",
        "-i",
        "reader",
        "-c",
        "main",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seen = b""
        async with asyncio.timeout(60):
            while b"got:hello" not in seen:
                proc.stdin.write(b"hello\n")  # until the attach is up: earlier lines are lost
                await proc.stdin.drain()
                with contextlib.suppress(TimeoutError):
                    seen += await asyncio.wait_for(proc.stdout.read(4096), 1)
    finally:
        proc.kill()
        await proc.wait()


async def test_kubectl_debug_it_sees_the_targets_processes(bed: Bed) -> None:
    """kubectl debug -it on a terminal: the ephemeral container starts in the pod's sandbox, in the
    target's process namespace, and kubectl attaches to its tty (input typed, the shell's output
    back). On a pipe instead of a terminal kubectl asks for stderr beside the container's tty,
    which the runtime refuses for kubelet too (CRI Attach: tty and stderr cannot both be true)."""
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={bed.e2e.kubeconfig}",
        "-n",
        bed.ns,
        "debug",
        "-it",
        "shell",
        f"--image={bed.e2e.busybox}",
        "--target=main",
        "-c",
        "dbg-it",
        "--",
        "sh",
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    os.write(master, b"ps -o pid,args; echo marker-$((6*7)); exit 3\n")

    try:
        output = await asyncio.wait_for(asyncio.to_thread(read_pty, master), 120)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
    text = output.decode(errors="replace")
    assert "marker-42" in text and "sleep 3600" in text, text
    p = await bed.e2e.pod(bed.ns, "shell")
    s = next(s for s in p["status"].get("ephemeralContainerStatuses") or [] if s["name"] == "dbg-it")
    assert s["containerID"].startswith("containerd://"), s


async def test_port_forward_serves_a_100mb_file_intact(bed: Bed) -> None:
    async def served() -> str:
        rc, out, _ = await bed.kubectl(
            "exec", "web", "--", "sh", "-c", "test -f /www/big && sha256sum /www/big"
        )
        return out.decode().split(" ")[0] if rc == 0 else ""

    want = await wait_for(served, 120, 1, "100 MB file in the web pod")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={bed.e2e.kubeconfig}",
        "-n",
        bed.ns,
        "port-forward",
        "--address=127.0.0.1",
        "pod/web",
        f"{port}:8080",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert b"Forwarding from" in line, line
        h = hashlib.sha256()
        size = 0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        timeout = aiohttp.ClientTimeout(total=600)
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.get(f"http://127.0.0.1:{port}/big") as r,
        ):
            assert r.status == 200
            async for chunk in r.content.iter_chunked(1 << 16):
                h.update(chunk)
                size += len(chunk)
        elapsed = loop.time() - t0
        print(f"port-forward: {size / 1e6:.0f} MB in {elapsed:.1f} s = {size / 1e6 / elapsed:.1f} MB/s")
        assert size == 100 * 1024 * 1024 and h.hexdigest() == want
    finally:
        proc.terminate()
        await proc.wait()


async def test_cp_a_directory_in_and_out(bed: Bed, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    rc, _, err = await bed.kubectl("cp", str(src), f"{bed.ns}/shell:/tmp/copied", "-c", "main")
    assert rc == 0, err
    assert await bed.sh("shell", "cat /tmp/copied/a.txt") == "alpha\n"
    sums = await bed.sh("shell", "sha256sum /tmp/copied/sub/b.bin")
    assert sums.split(" ")[0] == hashlib.sha256((src / "sub" / "b.bin").read_bytes()).hexdigest()
    back = tmp_path / "back"
    rc, _, err = await bed.kubectl("cp", f"{bed.ns}/shell:/tmp/copied", str(back), "-c", "main")
    assert rc == 0, err
    assert (back / "a.txt").read_text() == "alpha\n"
    assert (back / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()


async def _exec_client(bed: Bed, *argv: str) -> asyncio.subprocess.Process:
    """``kubectl exec`` in the background, its stdin a pipe kept open."""
    return await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={bed.e2e.kubeconfig}",
        "-n",
        bed.ns,
        "exec",
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _pids(bed: Bed, args: str) -> list[str]:
    """Pids of the shell pod's processes whose command line is exactly ``args``."""
    out = await bed.sh("shell", "ps -o pid,args")
    rows = [line.split(None, 1) for line in out.splitlines()]
    return [r[0] for r in rows if len(r) == 2 and r[1].strip() == args]


async def _killed_client_leaves(bed: Bed, marker: str, *argv: str) -> None:
    """Start ``kubectl exec``, SIGKILL it once ``marker`` runs, and wait for ``marker`` to leave
    the container's process list."""
    proc = await _exec_client(bed, *argv)

    async def running() -> bool:
        return marker in await bed.sh("shell", "ps -o pid,args")

    try:
        await wait_for(running, 60, 0.5, f"{marker} running")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def gone() -> bool:
        return not await running()

    await wait_for(gone, 30, 0.5, f"{marker} gone after its client was killed")


async def test_killed_exec_client_with_stdin_leaves_no_process(bed: Bed) -> None:
    """warmlet closes the runtime's connection when the client goes: the command's stdin ends."""
    await _killed_client_leaves(
        bed, "reader-31338", "-i", "shell", "--", "sh", "-c", "cat >/dev/null; echo done", "reader-31338"
    )


async def test_killed_exec_client_leaves_no_process(bed: Bed) -> None:
    """containerd 1.6 does not end a streaming exec with its connection: warmlet ends the
    session's process (it neither reads stdin nor has a tty, so nothing else would)."""
    await _killed_client_leaves(bed, "sleep 31337", "shell", "--", "sleep", "31337")


async def test_concurrent_execs_of_one_command_each_end_only_their_own(bed: Bed) -> None:
    """Two ``kubectl exec -- sleep 4242`` at once: killing one client ends one process, and the
    one left is the other session's (its client still runs and gets its exit code)."""
    first, second = await asyncio.gather(
        _exec_client(bed, "shell", "--", "sleep", "4242"), _exec_client(bed, "shell", "--", "sleep", "4242")
    )
    try:

        async def both() -> bool:
            return len(await _pids(bed, "sleep 4242")) == 2

        await wait_for(both, 60, 0.5, "two sleep 4242 running")
        first.kill()
        await first.wait()

        async def one() -> list[str]:
            left = await _pids(bed, "sleep 4242")
            return left if len(left) == 1 else []

        (left,) = await wait_for(one, 30, 0.5, "one sleep 4242 left after its client was killed")
        await asyncio.sleep(2)  # the first session is over: nothing else goes
        assert await _pids(bed, "sleep 4242") == [left] and second.returncode is None
        await bed.sh("shell", f"kill {left}")
        assert await asyncio.wait_for(second.wait(), 30) == 143  # its own process: SIGTERM
    finally:
        for p in (first, second):
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()
        with contextlib.suppress(AssertionError):
            for pid in await _pids(bed, "sleep 4242"):
                await bed.sh("shell", f"kill {pid}")


async def test_finished_exec_leaves_what_it_started_in_the_background(bed: Bed) -> None:
    """As on kubelet: an exec that ended by itself ends nothing it left behind on purpose (the
    child is reparented to the shim, like a new exec's process)."""
    rc, out, err = await bed.kubectl(
        "exec", "shell", "--", "sh", "-c", "sleep 4343 </dev/null >/dev/null 2>&1 & echo started"
    )
    assert (rc, out) == (0, b"started\n"), err
    try:
        for _ in range(8):  # the session's end has run by now; the child stays
            await asyncio.sleep(0.5)
            assert len(await _pids(bed, "sleep 4343")) == 1
    finally:
        for pid in await _pids(bed, "sleep 4343"):
            await bed.sh("shell", f"kill {pid}")


async def _kubelet_port(bed: Bed) -> int:
    node = await bed.e2e.client.get(f"/api/v1/nodes/{bed.node}")
    return int(node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"])


async def test_unauthenticated_and_unauthorized_upgrades_are_refused(bed: Bed) -> None:
    port = await _kubelet_port(bed)
    # a service account with no permission on nodes/proxy
    sa = f"nobody-{uuid.uuid4().hex[:6]}"
    await bed.e2e.client.post(f"/api/v1/namespaces/{bed.ns}/serviceaccounts", {"metadata": {"name": sa}})
    tr = await bed.e2e.client.post(
        f"/api/v1/namespaces/{bed.ns}/serviceaccounts/{sa}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    token = tr["status"]["token"]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    url = f"https://127.0.0.1:{port}/exec/{bed.ns}/shell/main?command=id&output=1"
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "SPDY/3.1",
        "X-Stream-Protocol-Version": "v4.channel.k8s.io",
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(url, headers=upgrade, ssl=ctx) as r:
            assert r.status == 401, await r.text()
        async with s.post(url, headers={**upgrade, "Authorization": f"Bearer {token}"}, ssl=ctx) as r:
            body = await r.text()
            assert r.status == 403 and "subresource(s)=[proxy]" in body, body
        pf = f"https://127.0.0.1:{port}/portForward/{bed.ns}/web"
        async with s.post(pf, headers={**upgrade, "Authorization": f"Bearer {token}"}, ssl=ctx) as r:
            assert r.status == 403


async def test_simulated_backend_says_it_runs_no_processes(bed: Bed) -> None:
    e2e = bed.e2e
    cfg = node_config(e2e.kubeconfig, e2e.tmp / "sim", node_name=f"sim-{uuid.uuid4().hex[:6]}")
    cfg.server.address = "127.0.0.1"
    cfg.server.client_ca_file = Path(e2e.testbed.client_ca_cert)
    e2e.instances.add(cfg.node.name)
    await e2e.start(cfg)
    spec = pod_spec(cfg.node.name, "sleep 3600", e2e.busybox, restart="Always")
    await e2e.client.post(
        f"/api/v1/namespaces/{bed.ns}/pods",
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sim"}, "spec": spec},
    )

    async def running() -> bool:
        return bool((await e2e.pod(bed.ns, "sim"))["status"].get("phase") == "Running")

    await wait_for(running, 120, 0.5, "simulated pod running")
    rc, out, err = await bed.kubectl("exec", "sim", "--", "true")
    assert rc != 0 and b"runs no processes" in err, (rc, out, err)
