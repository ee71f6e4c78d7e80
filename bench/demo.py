"""``warmlet demo``: see warm starts on this machine in about a minute.

Brings up (or reuses) the local test bed — control plane, containerd, loopback registry — or,
with ``--kubeconfig``, uses an existing cluster (CRI socket from ``--cri-endpoint``); starts a
warmlet node on the CRI backend as a ``warmlet run`` subprocess; runs a sample workload (a
CronJob every minute and a Deployment); measures cold, image-cached and warm start latencies
right now with the cold-vs-warm benchmark's code (small N); prints them and where to look next,
then keeps the node running (new CronJob pods are reported as they start) until Ctrl-C, which
deletes the sample workload and stops the node, saying what it does step by step. The test bed
stays up unless ``--down``.

In ``bench/`` (not ``provider/``): it runs the benchmark and test-bed code, which the product never
imports; ``warmlet demo`` imports this module only when that subcommand runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bench.narrate import Narrator

log = logging.getLogger("warmlet.demo")
NAMESPACE = "warmlet-demo"
NODE_NAME = "warmlet-demo"
LEVEL_LABELS = {
    "cold": "cold (pull + sandbox)",
    "image_cached": "image cached",
    "warm": "warm (pooled sandbox)",
}
JSON = dict[str, Any]
NAMESPACE_WAIT_SECONDS = 60.0


# ---------------------------------------------------------------------------- pure parts


def _ms(v: Any) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "-"
    return "-" if math.isnan(f) else f"{f:,.0f} ms"


def level_rows(result: Mapping[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """(level, n, p50, p95, p99, p50 vs warm) per level, then the bare-CRI floor."""
    levels: Mapping[str, Any] = result.get("levels") or {}
    warm = float((levels.get("warm") or {}).get("p50_ms") or math.nan)
    rows = []
    for lv in ("cold", "image_cached", "warm"):
        s = levels.get(lv)
        if not s:
            continue
        p50 = float(s.get("p50_ms") or math.nan)
        vs = f"{p50 / warm:.1f}x" if warm and not math.isnan(warm) and not math.isnan(p50) else "-"
        rows.append(
            (
                LEVEL_LABELS.get(lv, lv),
                str(s.get("n", "")),
                _ms(p50),
                _ms(s.get("p95_ms")),
                _ms(s.get("p99_ms")),
                vs,
            )
        )
    f = result.get("floor") or {}
    if f.get("n"):
        rows.append(
            (
                "floor: bare CRI create+start",
                str(f["n"]),
                _ms(f.get("p50_ms")),
                _ms(f.get("p95_ms")),
                _ms(f.get("p99_ms")),
                "",
            )
        )
    return rows


def results_table(result: Mapping[str, Any]) -> Any:
    """The rich table the demo prints."""
    from rich.table import Table

    t = Table(title="pod start latency now (POST → Running, as kubectl sees it)", title_justify="left")
    for col, just in (
        ("start", "left"),
        ("n", "right"),
        ("p50", "right"),
        ("p95", "right"),
        ("p99", "right"),
        ("vs warm", "right"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for row in level_rows(result):
        t.add_row(*row)
    mism = result.get("level_mismatches")
    if mism:
        t.caption = f"{mism} pod(s) reported another start level than intended (warmlet.io/start-level)"
    return t


def admin_client_cert(kubeconfig: str) -> tuple[str, str] | None:
    """(cert, key) file paths of the kubeconfig's current user, when it uses files."""
    try:
        cfg = yaml.safe_load(Path(kubeconfig).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    ctx_name = cfg.get("current-context")
    ctx = next((c.get("context") or {} for c in cfg.get("contexts") or [] if c.get("name") == ctx_name), {})
    user = next((u.get("user") or {} for u in cfg.get("users") or [] if u.get("name") == ctx.get("user")), {})
    cert, key = user.get("client-certificate"), user.get("client-key")
    return (str(cert), str(key)) if cert and key else None


def next_steps(
    kubeconfig: str,
    kubectl: str,
    node: str,
    port: int,
    namespace: str,
    warmlet_log: str,
    client_cert: tuple[str, str] | None,
    image: str = "busybox",
) -> list[str]:
    """Commands to look around while the demo node runs (pure, unit tested)."""
    k = "kubectl"
    lines = [f"export KUBECONFIG={kubeconfig}"]
    if os.path.sep in kubectl:
        lines.append(f'export PATH="{os.path.dirname(kubectl)}:$PATH"')
    lines += [
        f"{k} get nodes,pods -A -o wide",
        f"{k} describe node {node}",
        f"{k} -n {namespace} get cronjob,deploy,pods",
        f"{k} -n {namespace} get pods -o 'custom-columns="
        r"NAME:.metadata.name,PHASE:.status.phase,START:.metadata.annotations.warmlet\.io/start-level'",
        f"{k} -n {namespace} logs deploy/web",
        f"{k} -n {namespace} logs -l job-name --tail 5 --prefix",
        f"{k} -n {namespace} exec -it deploy/web -- sh   # a shell in a pod (exit leaves it)",
        f"{k} -n {namespace} port-forward deploy/web 8080:8080 & sleep 1; curl -s 127.0.0.1:8080/; kill %1",
        f"POD=$({k} -n {namespace} get pod -l app=web -o name | head -1 | cut -d/ -f2)",
        f"{k} -n {namespace} cp /etc/os-release $POD:/tmp/os-release && "
        f"{k} -n {namespace} exec $POD -- head -1 /tmp/os-release",
        f"{k} -n {namespace} debug -it pod/$POD --image={image} --target=app -- ps   # the app's processes",
    ]
    # Not through the API server's node proxy: it refuses loopback node addresses.
    if client_cert:
        lines.append(
            f"curl -sk --cert {client_cert[0]} --key {client_cert[1]} "
            f"https://127.0.0.1:{port}/metrics | grep ^warmlet_"
            "   # client cert of the cluster's CA; authorized by SubjectAccessReview (nodes/metrics)"
        )
    else:
        lines.append(
            f"https://127.0.0.1:{port}/metrics  (client cert of the cluster's CA, or a bearer token)"
        )
    lines.append(f"tail -f {warmlet_log}   # warmlet's own structured log")
    return lines


def sample_workload(node: str, image: str) -> list[tuple[str, JSON]]:
    """(API collection path, object) of the sample CronJob (every minute) and Deployment."""
    from testbed.testing import pod_template

    def template(command: list[str], labels: dict[str, str], **spec: Any) -> JSON:
        t = pod_template(
            node,
            containers=[
                {"name": "app", "image": image, "imagePullPolicy": "IfNotPresent", "command": command}
            ],
            **spec,
        )
        t["metadata"]["labels"] = labels
        return t

    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "tick"},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 1,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 0,
                    "template": template(
                        ["sh", "-c", "echo tick at $(date -u +%T) on $(hostname)"],
                        {"app": "tick"},
                        restartPolicy="Never",
                    ),
                }
            },
        },
    }
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": template(
                [
                    "sh",
                    "-c",
                    "echo web up on $(hostname); mkdir -p /www && echo hello from $(hostname) > "
                    "/www/index.html; trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait",
                ],
                {"app": "web"},
            ),
        },
    }
    return [
        (f"/apis/batch/v1/namespaces/{NAMESPACE}/cronjobs", cron),
        (f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", deploy),
    ]


STOP_BED = ("stopping the test bed", "python -m testbed down, up to 60 s")


def cleanup_steps(node: str, namespace: str, runtime: bool, stop_bed: bool) -> list[tuple[str, str]]:
    """(what, detail) of each thing the demo does when it stops, in order: announced up front,
    then said step by step."""
    steps = [
        (
            f"deleting namespace {namespace}",
            "the sample workload; its pods stop within their 5 s grace, "
            f"up to {NAMESPACE_WAIT_SECONDS:.0f} s",
        ),
        (f"stopping warmlet node {node}", "SIGTERM: it shuts down cleanly; killed after 20 s"),
        (
            f"deleting the Node {node}" + (" and its idle pool sandboxes" if runtime else ""),
            "the Node object" + (", then the sandboxes it left in containerd" if runtime else ""),
        ),
    ]
    if stop_bed:
        steps.append(STOP_BED)
    return steps


def parser() -> argparse.ArgumentParser:
    """``warmlet demo``'s options."""
    p = argparse.ArgumentParser(
        prog="warmlet demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kubeconfig", type=Path, help="an existing cluster instead of the local test bed")
    p.add_argument("--cri-endpoint", help="CRI socket with --kubeconfig (default $WARMLET_CRI_ENDPOINT)")
    p.add_argument("--image", help="image of the sample workload (default: the bed's fat image)")
    p.add_argument("--n", type=int, default=5, help="pods measured per start level")
    p.add_argument("--down", action="store_true", help="stop the test bed at the end")
    p.add_argument(
        "--no-wait",
        action="store_true",
        help="clean up and exit after measuring (default: keep the node running until Ctrl-C)",
    )
    return p


# ---------------------------------------------------------------------------- steps


def _testbed_up(console: Any) -> None:
    """``python -m testbed up`` (no-op when the CLI bed is already running)."""
    from bench.harness import cli_bed_running

    if cli_bed_running():
        console.print("[green]✓[/] test bed already running (slot 0)")
        return
    with console.status("bringing up the test bed (control plane, containerd, registry)…"):
        r = subprocess.run([sys.executable, "-m", "testbed", "up"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"python -m testbed up failed:\n{r.stdout}\n{r.stderr}")
    console.print(f"[green]✓[/] {r.stdout.strip().splitlines()[0] if r.stdout.strip() else 'test bed up'}")


async def _recreate_namespace(client: Any) -> None:
    from bench.harness import delete_namespace
    from provider.kubeclient import ApiError
    from testbed.testing import create_namespace

    with contextlib.suppress(ApiError):
        await client.get(f"/api/v1/namespaces/{NAMESPACE}")
        await delete_namespace(client, NAMESPACE, wait=120)  # a previous demo's leftovers
    await create_namespace(client, name=NAMESPACE)


async def _wait_deployment(client: Any, within: float = 180) -> None:
    from testbed.testing import list_pods, phase, wait_for

    async def running() -> bool:
        pods = await list_pods(client, NAMESPACE, "app=web")
        return len(pods) >= 2 and all(phase(p) == "Running" for p in pods)

    await wait_for(running, within, 0.5, "Deployment web Running")


async def _clean_up(say: Narrator, client: Any, node_cm: Any, node: Any, stop_bed: bool) -> None:
    """Delete the sample workload, stop the node, delete it and its sandboxes: each step said; a
    step that fails (said with its error) does not keep the next ones from running."""
    from bench.harness import delete_namespace, stop_process

    steps = cleanup_steps(node.name, NAMESPACE, node.backend == "cri", stop_bed)
    say.say(f"\ncleaning up: {'; '.join(what for what, _ in steps)}")
    with contextlib.suppress(Exception):
        gone = await say.step(*steps[0], delete_namespace(client, NAMESPACE, wait=NAMESPACE_WAIT_SECONDS))
        if not gone:
            say.say(f"    namespace {NAMESPACE} still terminating: left to the API server")
    if node.proc is not None:
        with contextlib.suppress(Exception):
            await say.step(*steps[1], asyncio.to_thread(stop_process, node.proc))
    await say.step(*steps[2], node_cm.__aexit__(None, None, None))


async def _report_cron_pods(client: Any, console: Any) -> None:
    """Until cancelled: print each new CronJob pod once Running/Succeeded, with its start level."""
    from testbed.testing import list_pods, phase

    seen: set[str] = set()
    while True:
        with contextlib.suppress(Exception):
            for p in await list_pods(client, NAMESPACE, "app=tick"):
                name = p["metadata"]["name"]
                level = (p["metadata"].get("annotations") or {}).get("warmlet.io/start-level")
                if name in seen or phase(p) not in ("Running", "Succeeded") or not level:
                    continue
                seen.add(name)
                console.print(
                    f"  [cyan]{time.strftime('%H:%M:%S')}[/] CronJob pod {name}: {phase(p)}, "
                    f"start level [bold]{level}[/]"
                )
        await asyncio.sleep(3)


async def run_demo(ns: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from bench.cold_vs_warm import BareFloor, build_result, measure_levels
    from bench.harness import Bed, bed_session, warmlet_node
    from provider.kubeclient import KubeClient
    from testbed.util import bin_dir

    console = Console()
    say = Narrator(console)
    # Ctrl-C and SIGTERM cancel this task, so the finally blocks below clean up (also when
    # SIGINT was ignored by a non-interactive parent shell).
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if main_task is not None:
            loop.add_signal_handler(sig, main_task.cancel)
    if ns.kubeconfig is None:
        await asyncio.to_thread(_testbed_up, console)
    kubeconfig = str(ns.kubeconfig) if ns.kubeconfig else None
    async with bed_session(kubeconfig, ns.cri_endpoint) as bed:
        assert isinstance(bed, Bed)
        image = ns.image or bed.images.get("fat") or bed.images.get("busybox")
        sample_image = bed.images.get("busybox") or image
        if not image or not bed.cri_endpoint:
            console.print(
                "[red]need --image and --cri-endpoint (or $WARMLET_CRI_ENDPOINT) with --kubeconfig[/]"
            )
            return 2
        kubectl = str(bin_dir() / "kubectl") if bed.is_testbed else "kubectl"
        client = await KubeClient.from_kubeconfig(bed.kubeconfig)
        try:
            with console.status("starting a warmlet node (CRI backend, warm pool)…"):
                node_cm = warmlet_node(bed, "cri", name=NODE_NAME)
                node = await node_cm.__aenter__()
            try:
                console.print(
                    f"[green]✓[/] node [bold]{node.name}[/] Ready "
                    f"(kubelet API :{node.port}, log {node.log_path})"
                )
                with console.status(
                    "creating the sample workload: CronJob tick (every minute), Deployment web…"
                ):
                    await _recreate_namespace(client)
                    for path, obj in sample_workload(node.name, str(sample_image)):
                        await client.post(path, obj)
                    await _wait_deployment(client)
                console.print(f"[green]✓[/] sample workload running in namespace {NAMESPACE}")

                n = max(1, int(ns.n))
                with Progress(
                    SpinnerColumn(),
                    TextColumn("{task.description}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(),
                    console=console,
                    transient=True,
                ) as progress:
                    task = progress.add_task("measuring cold starts", total=3 * n)

                    def on_pod(level: str, i: int, seconds: float, observed: str | None) -> None:
                        nxt = {"cold": "cold", "image_cached": "image-cached", "warm": "warm"}[level]
                        progress.update(
                            task,
                            advance=1,
                            description=f"measuring {nxt} starts (last {seconds * 1000:.0f} ms)",
                        )

                    async with BareFloor(bed.cri_endpoint, image) as bare:
                        got = await measure_levels(
                            client,
                            node.name,
                            bed.cri_endpoint,
                            image,
                            n,
                            on_pod=on_pod,
                            ns=NAMESPACE,
                            floor=bare,
                        )
                        floor = await bare.fill(n)
                result = build_result(
                    n, image, got["samples_s"], floor, got["mismatches"], {"name": node.name}
                )
                console.print(results_table(result))
                console.print(
                    f"image: {image}  (cold = removed from containerd, then pulled from the registry)"
                )
                console.print("\n[bold]where to look next[/] (while this runs):")
                for line in next_steps(
                    bed.kubeconfig,
                    kubectl,
                    node.name,
                    node.port,
                    NAMESPACE,
                    str(node.log_path),
                    admin_client_cert(bed.kubeconfig),
                    str(sample_image),
                ):
                    console.print(f"  {line}", soft_wrap=True, highlight=False)
                if ns.no_wait:
                    return 0
                console.print(
                    "\nnode running; CronJob pods are reported as they start. "
                    "[bold]Ctrl-C[/] stops the node and deletes the sample workload."
                )
                await _report_cron_pods(client, console)
                return 0
            finally:
                await _clean_up(say, client, node_cm, node, bool(ns.down and ns.kubeconfig is None))
                console.print(
                    "[green]✓[/] node stopped and sample workload deleted"
                    + ("" if ns.down else "; the test bed stays up (python -m testbed down)")
                )
        finally:
            await client.close()


def main(argv: list[str]) -> int:
    """Entry point of ``warmlet demo`` (the arguments after ``demo``)."""
    from rich.console import Console

    ns = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    rc = 130
    try:
        rc = asyncio.run(run_demo(ns))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: cleaned up")
    finally:
        if ns.down and ns.kubeconfig is None:
            what, detail = STOP_BED
            Narrator(Console()).run(
                what, detail, lambda: subprocess.run([sys.executable, "-m", "testbed", "down"], check=False)
            )
    return rc
