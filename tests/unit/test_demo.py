"""warmlet demo: the pure parts (latency table rows, next steps, sample workload, kubeconfig, cleanup
steps) and the narrator that says what each slow step does."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from bench import demo
from bench.narrate import Narrator
from common.clock import FakeClock


def _result() -> dict:  # type: ignore[type-arg]
    return {
        "levels": {
            "cold": {"n": 5, "p50_ms": 800.0, "p95_ms": 900.0, "p99_ms": 950.0},
            "image_cached": {"n": 5, "p50_ms": 200.0, "p95_ms": 210.0, "p99_ms": 220.0},
            "warm": {"n": 5, "p50_ms": 100.0, "p95_ms": 110.0, "p99_ms": 1234.4},
        },
        "floor": {"n": 5, "p50_ms": 50.0, "p95_ms": 55.0, "p99_ms": 60.0},
        "level_mismatches": 0,
    }


def test_level_rows_format_and_ratio_to_warm() -> None:
    rows = demo.level_rows(_result())
    assert rows[0] == ("cold (pull + sandbox)", "5", "800 ms", "900 ms", "950 ms", "8.0x")
    assert rows[1][-1] == "2.0x"
    assert rows[2][4] == "1,234 ms" and rows[2][-1] == "1.0x"
    assert rows[3][0].startswith("floor") and rows[3][-1] == ""


def test_level_rows_without_warm() -> None:
    r = _result()
    del r["levels"]["warm"]
    r["floor"] = {}
    rows = demo.level_rows(r)
    assert [row[-1] for row in rows] == ["-", "-"]


def test_results_table_caption_on_mismatch() -> None:
    r = _result()
    r["level_mismatches"] = 2
    assert "2 pod(s)" in str(demo.results_table(r).caption)


def test_next_steps() -> None:
    lines = demo.next_steps(
        "/k/admin.kubeconfig",
        "/bin/x/kubectl",
        "warmlet-demo",
        1234,
        "warmlet-demo",
        "/tmp/w.log",
        ("c", "k"),
        "img:1",
    )
    text = "\n".join(lines)
    assert "kubectl -n warmlet-demo exec -it deploy/web -- sh" in text
    assert "port-forward deploy/web 8080:8080" in text
    assert "debug -it pod/$POD --image=img:1 --target=app" in text
    assert lines[0] == "export KUBECONFIG=/k/admin.kubeconfig"
    assert 'export PATH="/bin/x:$PATH"' in text
    assert "kubectl get nodes,pods -A -o wide" in text
    assert "curl -sk --cert c --key k https://127.0.0.1:1234/metrics" in text
    assert "'custom-columns=" in text  # quoted: the escaped dot survives the shell
    assert "tail -f /tmp/w.log" in text
    no_cert = demo.next_steps("kc", "kubectl", "n", 1, "ns", "l", None)
    assert not any("export PATH" in line for line in no_cert)
    assert any("https://127.0.0.1:1/metrics" in line for line in no_cert)


def test_admin_client_cert(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    kc.write_text(
        yaml.safe_dump(
            {
                "current-context": "a",
                "contexts": [{"name": "a", "context": {"user": "u"}}],
                "users": [{"name": "u", "user": {"client-certificate": "/c.crt", "client-key": "/c.key"}}],
            }
        )
    )
    assert demo.admin_client_cert(str(kc)) == ("/c.crt", "/c.key")
    assert demo.admin_client_cert(str(tmp_path / "missing")) is None


def test_sample_workload_pins_to_node() -> None:
    objs = dict(demo.sample_workload("node-x", "img"))
    cron = objs[f"/apis/batch/v1/namespaces/{demo.NAMESPACE}/cronjobs"]
    assert cron["spec"]["schedule"] == "* * * * *"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "node-x"}
    assert pod["spec"]["restartPolicy"] == "Never"
    dep = objs[f"/apis/apps/v1/namespaces/{demo.NAMESPACE}/deployments"]
    assert dep["spec"]["template"]["metadata"]["labels"] == dep["spec"]["selector"]["matchLabels"]


def test_demo_cli_flags() -> None:
    ns = demo.parser().parse_args(["--n", "3", "--no-wait"])
    assert ns.n == 3 and ns.no_wait and ns.kubeconfig is None and not ns.down


def test_cleanup_steps_say_everything_in_order() -> None:
    steps = demo.cleanup_steps("node-x", "ns-y", runtime=True, stop_bed=True)
    assert [what for what, _ in steps] == [
        "deleting namespace ns-y",
        "stopping warmlet node node-x",
        "deleting the Node node-x and its idle pool sandboxes",
        "stopping the test bed",
    ]
    assert all(detail for _, detail in steps)  # each says how long it may take or how it works
    simulated = demo.cleanup_steps("n", "ns", runtime=False, stop_bed=False)
    assert [what for what, _ in simulated][-1] == "deleting the Node n"
    assert "containerd" not in simulated[-1][1]


def _narrator(heartbeat: float, clock: FakeClock | None = None) -> tuple[Narrator, Console]:
    console = Console(record=True, width=200, force_terminal=False)
    return Narrator(console, heartbeat=heartbeat, clock=clock or FakeClock()), console


async def test_narrator_says_start_heartbeat_and_done() -> None:
    clock = FakeClock()
    say, console = _narrator(heartbeat=10, clock=clock)

    async def stop() -> int:
        await clock.sleep(25)
        return 7

    task = asyncio.create_task(say.step("stopping x", "SIGTERM", stop()))
    await clock.advance(0)  # the step and its heartbeat start sleeping
    assert console.export_text(clear=False).splitlines() == ["  → stopping x (SIGTERM)…"]
    await clock.advance(9.9)
    assert len(console.export_text(clear=False).splitlines()) == 1  # nothing before the first beat
    await clock.advance(0.1)
    assert console.export_text(clear=False).splitlines()[-1] == "    … still stopping x (10 s)"
    await clock.advance(15)
    assert task.done()
    assert task.result() == 7
    assert console.export_text().splitlines() == [
        "  → stopping x (SIGTERM)…",
        "    … still stopping x (10 s)",  # never a silent wait
        "    … still stopping x (20 s)",
        "  ✓ stopping x (25 s)",
    ]


async def test_narrator_says_a_failure_and_raises_it() -> None:
    say, console = _narrator(heartbeat=10)

    async def boom() -> None:
        raise RuntimeError("no API")

    with pytest.raises(RuntimeError):
        await say.step("deleting ns", "", boom())
    lines = console.export_text().splitlines()
    assert lines == ["  → deleting ns…", "  ✗ deleting ns: RuntimeError('no API') (0 s)"]


async def test_narrator_says_when_interrupted() -> None:
    clock = FakeClock()
    say, console = _narrator(heartbeat=10, clock=clock)
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await clock.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    task = asyncio.create_task(say.step("deleting ns", "", slow()))
    await clock.advance(0)
    await clock.advance(15)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()  # the step's work is cancelled with it
    assert clock.sleepers == 0  # and so is its heartbeat
    assert console.export_text().splitlines()[1:] == [
        "    … still deleting ns (10 s)",
        "  ✗ deleting ns: interrupted",
    ]


def test_narrator_runs_a_blocking_step() -> None:
    say, console = _narrator(heartbeat=10)
    assert say.run("stopping the bed", "", lambda: 3) == 3
    assert console.export_text().splitlines()[-1].startswith("  ✓ stopping the bed (")


class _FakeClient:
    def __init__(self, fail_delete: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_delete = fail_delete

    async def delete(self, path: str) -> None:
        self.calls.append(f"DELETE {path}")
        if self.fail_delete:
            raise OSError("API down")

    async def get(self, path: str) -> None:
        from provider.kubeclient import ApiError

        raise ApiError(404, "NotFound", path)


class _FakeNodeCm:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def __aexit__(self, *exc: object) -> None:
        self.log.append("node context exited")


class _FakeProc:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def poll(self) -> int | None:
        return None

    def send_signal(self, sig: int) -> None:
        self.log.append(f"signal {sig}")

    def wait(self, timeout: float) -> int:
        return 0


async def test_clean_up_says_each_step_and_does_it_in_order() -> None:
    say, console = _narrator(heartbeat=10)
    client, log = _FakeClient(), []
    node = argparse.Namespace(name="wl", backend="cri", proc=_FakeProc(log))
    await demo._clean_up(say, client, _FakeNodeCm(log), node, stop_bed=True)
    text = console.export_text()
    lines = text.splitlines()
    assert lines[1].startswith("cleaning up: deleting namespace warmlet-demo; stopping warmlet node wl;")
    assert "stopping the test bed" in lines[1]  # announced (done after the event loop ends)
    said = [line.strip()[:1] + " " + line.strip()[2:].split(" (", 1)[0] for line in lines[2:]]
    assert said == [
        "→ deleting namespace warmlet-demo",
        "✓ deleting namespace warmlet-demo",
        "→ stopping warmlet node wl",
        "✓ stopping warmlet node wl",
        "→ deleting the Node wl and its idle pool sandboxes",
        "✓ deleting the Node wl and its idle pool sandboxes",
    ]
    assert client.calls == [f"DELETE /api/v1/namespaces/{demo.NAMESPACE}"]
    assert log == ["signal 15", "node context exited"]


async def test_clean_up_goes_on_after_a_failed_step() -> None:
    say, console = _narrator(heartbeat=10)
    client, log = _FakeClient(fail_delete=True), []
    node = argparse.Namespace(name="wl", backend="simulated", proc=None)
    # delete_namespace tolerates only ApiError on delete: an OSError fails the step, said with ✗
    await demo._clean_up(say, client, _FakeNodeCm(log), node, stop_bed=False)
    text = console.export_text()
    assert "✗ deleting namespace warmlet-demo: OSError('API down')" in text
    assert "✓ deleting the Node wl (" in text
    assert log == ["node context exited"]
