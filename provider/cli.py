"""The ``warmlet`` command line: version, run, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from pathlib import Path

from common import gctune
from provider import __version__
from provider.config import WarmletConfig, load_config


def _run_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="register a virtual node and run the pods bound to it")
    p.add_argument("--config", type=Path, help="YAML config file (see README: Configuration)")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig of the cluster to join")
    p.add_argument("--node-name", help="name of the Node to register")
    p.add_argument("--backend", choices=["simulated", "cri"], help="where pods run")
    p.add_argument(
        "--nodes",
        type=int,
        help="simulated nodes in this process (nodes.count): <node-name>-0 ... (see nodes.name_pattern)",
    )
    p.add_argument("--runtime-endpoint", help="CRI socket, e.g. unix:///run/containerd/containerd.sock")
    p.add_argument("--port", type=int, help="kubelet API port (advertised in the Node)")
    p.add_argument("--address", help="kubelet API bind address")
    p.add_argument(
        "--internal-ip",
        default=os.environ.get("WARMLET_INTERNAL_IP"),
        help="node InternalIP (default: $WARMLET_INTERNAL_IP, e.g. the pod IP when run in cluster)",
    )
    p.add_argument("--log-dir", type=Path, help="root of CRI pod log directories")
    p.add_argument("--state-dir", type=Path, help="warmlet's own state (volumes, certs)")
    p.add_argument("--client-ca-file", type=Path, help="CA verifying kubelet API client certs")
    p.add_argument("--tls-cert-file", type=Path)
    p.add_argument("--tls-key-file", type=Path)
    p.add_argument("--log-format", choices=["kv", "json"])
    p.add_argument("--log-level")
    p.add_argument(
        "--leader-elect",
        action="store_true",
        default=None,
        help="run as one of several processes for this node name: only the Lease holder runs it",
    )
    p.add_argument("--leader-elect-lease-name", help="election Lease name (default <node>-warmlet-leader)")
    p.add_argument("--leader-elect-namespace", help="election Lease namespace (default kube-node-lease)")
    p.add_argument("--leader-elect-identity", help="candidate identity (default <host>_<pid>_<random>)")
    p.add_argument("--leader-elect-lease-duration", type=float, help="seconds (default 10)")
    p.add_argument("--leader-elect-renew-deadline", type=float, help="seconds (default 8)")
    p.add_argument("--leader-elect-retry-period", type=float, help="seconds (default 2)")


# Subcommands that live outside the product: registered here by name and help line only, their
# module imported when (and only when) the subcommand runs; its ``main(argv) -> int`` parses the
# rest of the command line itself (``warmlet bench --help``, ``warmlet demo --help``).
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "bench.demo",
        "bring up the local test bed (or use --kubeconfig), run a warmlet node and a sample "
        "workload, and show cold / image-cached / warm start latencies",
    ),
    "bench": (
        "bench.cli",
        "run benchmark scenarios (cold-vs-warm, ...); --all regenerates bench/RESULTS.md "
        "(--report: that and docs/reliability.md, without running anything)",
    ),
}


def run_external(command: str, argv: list[str]) -> int:
    """Import the subcommand's module now and hand it the arguments after the subcommand."""
    module = importlib.import_module(EXTERNAL_COMMANDS[command][0])
    return int(module.main(argv))


def apply_run_flags(cfg: WarmletConfig, ns: argparse.Namespace) -> WarmletConfig:
    """CLI flags override the config file."""
    if ns.kubeconfig:
        cfg.kubeconfig = ns.kubeconfig
    if ns.node_name:
        cfg.node.name = ns.node_name
    if ns.backend:
        cfg.backend = ns.backend
    if getattr(ns, "nodes", None) is not None:
        cfg.nodes.count = ns.nodes
    if ns.runtime_endpoint:
        cfg.cri.runtime_endpoint = ns.runtime_endpoint
    if ns.port is not None:
        cfg.server.port = ns.port
    if ns.address:
        cfg.server.address = ns.address
    if ns.internal_ip:
        cfg.node.internal_ip = ns.internal_ip
    if ns.log_dir:
        cfg.log_dir = ns.log_dir
    if ns.state_dir:
        cfg.state_dir = ns.state_dir
        cfg.pods.volumes_dir = ns.state_dir / "pods"
        cfg.server.cert_dir = ns.state_dir / "pki"
    if ns.client_ca_file:
        cfg.server.client_ca_file = ns.client_ca_file
    if ns.tls_cert_file:
        cfg.server.tls_cert_file = ns.tls_cert_file
    if ns.tls_key_file:
        cfg.server.tls_key_file = ns.tls_key_file
    if ns.log_format:
        cfg.log_format = ns.log_format
    if ns.log_level:
        cfg.log_level = ns.log_level
    le = cfg.leader_election
    if getattr(ns, "leader_elect", None):
        le.enabled = True
    for flag, attr in (
        ("leader_elect_lease_name", "lease_name"),
        ("leader_elect_namespace", "namespace"),
        ("leader_elect_identity", "identity"),
        ("leader_elect_lease_duration", "lease_duration_seconds"),
        ("leader_elect_renew_deadline", "renew_deadline_seconds"),
        ("leader_elect_retry_period", "retry_period_seconds"),
    ):
        value = getattr(ns, flag, None)
        if value is not None:
            setattr(le, attr, value)
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in EXTERNAL_COMMANDS:
        return run_external(args[0], args[1:])
    parser = argparse.ArgumentParser(prog="warmlet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print warmlet's version")
    _run_parser(sub)
    for name, (_, help_line) in EXTERNAL_COMMANDS.items():
        sub.add_parser(name, help=help_line, add_help=False)  # listed in --help; run above
    pl = sub.add_parser(
        "placement",
        help="run only the placement webhook and/or fast binder (config section placement:)",
    )
    pl.add_argument("--config", type=Path, help="YAML config file (see README: Placement)")
    pl.add_argument("--kubeconfig", type=Path, help="kubeconfig of the cluster")
    pl.add_argument("--log-format", choices=["kv", "json"])
    pl.add_argument("--log-level")
    ns = parser.parse_args(args)

    if ns.command == "version":
        print(f"warmlet {__version__}")
        return 0
    if ns.command == "run":
        from provider.app import run_forever

        cfg = apply_run_flags(load_config(ns.config), ns)
        try:
            cfg.node_configs()  # flags may have made nodes: invalid (e.g. --backend cri)
        except ValueError as e:
            parser.error(str(e))
        gctune.tune()  # a node holds thousands of pods: see common/gctune.py
        try:
            return asyncio.run(run_forever(cfg))
        except KeyboardInterrupt:
            return 0
    if ns.command == "placement":
        from provider.placement.service import run_placement

        cfg = load_config(ns.config)
        cfg.kubeconfig = ns.kubeconfig or cfg.kubeconfig
        cfg.log_format = ns.log_format or cfg.log_format
        cfg.log_level = ns.log_level or cfg.log_level
        if not cfg.placement.enabled:
            parser.error("placement: enable placement.webhook and/or placement.binder in --config")
        try:
            asyncio.run(run_placement(cfg))
        except KeyboardInterrupt:
            pass
        return 0
    parser.error(f"unknown command {ns.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
