"""The ``warmlet`` command line: version, run, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from provider import __version__
from provider.config import WarmletConfig, load_config


def _run_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("run", help="register a virtual node and run the pods bound to it")
    p.add_argument("--config", type=Path, help="YAML config file (see README: Configuration)")
    p.add_argument("--kubeconfig", type=Path, help="kubeconfig of the cluster to join")
    p.add_argument("--node-name", help="name of the Node to register")
    p.add_argument("--backend", choices=["simulated", "cri"], help="where pods run")
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


def _demo_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="bring up the local test bed (or use --kubeconfig), run a warmlet node and a sample "
        "workload, and show cold / image-cached / warm start latencies",
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


def apply_run_flags(cfg: WarmletConfig, ns: argparse.Namespace) -> WarmletConfig:
    """CLI flags override the config file."""
    if ns.kubeconfig:
        cfg.kubeconfig = ns.kubeconfig
    if ns.node_name:
        cfg.node.name = ns.node_name
    if ns.backend:
        cfg.backend = ns.backend
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
    parser = argparse.ArgumentParser(prog="warmlet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print warmlet's version")
    _run_parser(sub)
    _demo_parser(sub)
    pl = sub.add_parser(
        "placement",
        help="run only the placement webhook and/or fast binder (config section placement:)",
    )
    pl.add_argument("--config", type=Path, help="YAML config file (see README: Placement)")
    pl.add_argument("--kubeconfig", type=Path, help="kubeconfig of the cluster")
    pl.add_argument("--log-format", choices=["kv", "json"])
    pl.add_argument("--log-level")
    from bench.cli import add_bench_parser

    add_bench_parser(sub)
    # Scenario options of ``warmlet bench`` are passed through to the scenario's own parser.
    ns, extra = parser.parse_known_args(argv)
    if extra and ns.command != "bench":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    if ns.command == "version":
        print(f"warmlet {__version__}")
        return 0
    if ns.command == "run":
        from provider.app import run_forever

        cfg = apply_run_flags(load_config(ns.config), ns)
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
    if ns.command == "bench":
        from bench.cli import main as bench_main

        return bench_main(ns, extra)
    if ns.command == "demo":
        from provider.demo import main as demo_main

        return demo_main(ns)
    parser.error(f"unknown command {ns.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
