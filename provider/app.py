"""warmlet's process: builds clients and backend, runs node, pods, prewarm and kubelet API.

``WarmletNode`` runs a whole virtual node inside the caller's event loop (tests embed it);
``run_forever`` is the CLI entry point with signal handling. Everything runs in one
TaskGroup: a crash of any part stops the node instead of leaving it half alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from typing import Any, cast

from common.clock import SYSTEM, Clock
from provider.config import NodeConfig, WarmletConfig
from provider.cron_prewarm import CronPrewarmer
from provider.dirclaim import DirClaim, claim_dirs
from provider.events import EventRecorder
from provider.kubeclient import KubeClient
from provider.kubelet_api.server import KubeletApiServer
from provider.kubelet_api.serving_csr import ServingCertManager, effective_mode
from provider.leader_election import LeaderElector
from provider.logging_setup import setup_logging
from provider.metrics import LEADER, record_api_error
from provider.node import NodeController
from provider.node_fleet import NodeFleet
from provider.node_object import capacity, node_addresses, node_labels, node_taints
from provider.node_scope import pods_per_node
from provider.pods.controller import PodController
from sandbox.backend import Backend

log = logging.getLogger(__name__)


def build_backend(cfg: WarmletConfig) -> Backend:
    """The backend named by cfg.backend (sandbox code is imported lazily: cri needs grpc)."""
    if cfg.backend == "simulated":
        from sandbox.simulated import SimulatedBackend

        sim = SimulatedBackend.from_config(cfg.simulated, cfg.log_dir, cfg.pool)
        return cast(Backend, sim)
    from sandbox.cri.backend import CriBackend

    return CriBackend.from_config(cfg.cri, cfg.pool, cfg.log_dir, cfg.state_dir, instance=cfg.node.name)


async def _start_kubelet_api(
    cfg: WarmletConfig, node: NodeConfig, backend: Backend, pods: PodController, client: KubeClient
) -> Any:
    """Start the kubelet HTTPS API (provider.kubelet_api) serving the informer's pods.

    A multi-node process serves one API for all its nodes (every Node advertises its port): pods
    are found by namespace/name whatever their node; ``node`` is the one it names itself after."""
    from provider.kubelet_api import start_kubelet_api

    return await start_kubelet_api(
        cfg.server,
        node.name,
        backend,
        lambda: list(pods.informer.pods.values()),
        client,
        log_root=str(cfg.log_dir),
        node_addresses=(cfg.node.internal_ip,),
    )


class WarmletNode:
    """One virtual node in the current event loop: ``await start()`` ... ``await stop()``.

    With ``nodes:`` in the config (simulated backend) it runs several nodes: one Node, Lease and
    status loop each (``fleet``), one backend, pod informer, work queue and kubelet API for all.
    ``node`` is then the first node's controller (``fleet.primary``)."""

    def __init__(
        self,
        cfg: WarmletConfig,
        backend: Backend | None = None,
        client: KubeClient | None = None,
        serve_kubelet_api: bool = True,
        cert_clock: Clock = SYSTEM,
    ) -> None:
        self.cfg = cfg
        cfg.node_configs()  # ValueError before any backend is built: nodes: with cri, bad names
        self.backend = backend or build_backend(cfg)
        self._own_backend = backend is None
        self.client = client
        self.serve_kubelet_api = serve_kubelet_api
        self.cert_clock = cert_clock  # the serving certificate's rotation clock (tests speed it up)
        self.serving_cert: ServingCertManager | None = None
        self.lease_client: KubeClient | None = None
        self.events_client: KubeClient | None = None
        self.node: NodeController | None = None  # the (first) node
        self.fleet: NodeFleet | None = None  # every node of the process
        self.node_cfgs: list[NodeConfig] = []
        self.pods: PodController | None = None
        self.recorder: EventRecorder | None = None
        self.prewarmer: CronPrewarmer | None = None
        self.punctual: Any = None  # provider.punctual.controller.PunctualController when enabled
        self._task: asyncio.Task[None] | None = None
        self._api_server: Any = None
        self._parts: list[asyncio.Task[None]] = []  # node, pods, cron-prewarm: stopped first on SIGTERM
        self._stopped = False
        self._dirs: DirClaim | None = None  # state/log/volumes dirs: never shared with another node

    async def start(self, within: float = 60.0) -> None:
        """Start everything; returns when the Node is registered and pods are being synced."""
        cfg = self.cfg
        self.node_cfgs = cfg.node_configs()  # ValueError: nodes: with the cri backend, bad names
        primary = self.node_cfgs[0]
        if self._dirs is None:
            self._dirs = claim_dirs(cfg)  # DirectoryInUse: another node's dirs (it would sweep ours)
        if self.client is None:
            self.client = await KubeClient.from_kubeconfig(
                str(cfg.kubeconfig) if cfg.kubeconfig else None, on_error=record_api_error, max_connections=64
            )
        # renewals never wait behind pod writes; a few more connections for thousands of nodes
        self.lease_client = self.client.clone(max_connections=min(32, 2 + len(self.node_cfgs) // 50))
        await self.backend.start()
        self.events_client = self.client.clone(max_connections=4)
        self.recorder = EventRecorder(self.events_client, primary.name)
        self.fleet = NodeFleet(
            self.node_cfgs, self.client, self.lease_client, self.backend, cfg.server.port, self.recorder
        )
        self.node = self.fleet.primary
        self.pods = PodController(
            primary,
            cfg.pods,
            self.client,
            self.backend,
            self.recorder,
            capacity(primary),
            node_names=self.fleet.names,
        )
        self.prewarmer = CronPrewarmer(
            cfg.pool, cfg.pods, self.client, self.backend, node_labels(primary), node_taints(primary)
        )
        self._task = asyncio.create_task(self._main(), name=f"warmlet-{primary.name}")
        waiter = asyncio.ensure_future(asyncio.wait_for(self._ready(), within))
        done, _ = await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            waiter.cancel()
            self._task.result()  # raise what killed it
            raise RuntimeError("warmlet stopped during start")
        waiter.result()
        log.info(
            "warmlet node started name=%s backend=%s nodes=%d",
            primary.name,
            self.backend.name,
            len(self.node_cfgs),
        )

    def _serving_cert_manager(self) -> ServingCertManager | None:
        """The CSR-issued serving certificate (serverTLSBootstrap); the persisted one served at once."""
        server = self._api_server
        srv = self.cfg.server
        mode = effective_mode(srv.tls_bootstrap, srv.tls_cert_file is not None)
        if mode == "never" or not isinstance(server, KubeletApiServer) or server.ssl_context is None:
            return None
        assert self.client is not None and self.recorder is not None and self.node is not None
        recorder, node = self.recorder, self.node  # a multi-node process: the first node's
        manager = ServingCertManager(
            self.client,
            node.cfg.name,
            node_addresses(node.cfg),
            srv.cert_dir,
            server.ssl_context,
            mode=mode,
            expiration_seconds=srv.tls_bootstrap_expiration_seconds,
            clock=self.cert_clock,
            on_rejected=lambda why: recorder.record(
                {"kind": "Node", "metadata": {"name": node.cfg.name, "uid": node.node_uid}},
                "Warning",
                "CertificateRequestFailed",
                why,
            ),
        )
        manager.load_persisted()
        return manager

    async def _ready(self) -> None:
        assert self.fleet is not None and self.pods is not None
        await self.fleet.registered.wait()
        await self.pods.ready.wait()

    async def _main(self) -> None:
        assert self.node and self.fleet and self.pods and self.recorder and self.prewarmer and self.client
        primary = self.node.cfg
        if self.serve_kubelet_api:
            # before registration, so the Node advertises the port actually bound (port 0 = any)
            self._api_server = await _start_kubelet_api(
                self.cfg, primary, self.backend, self.pods, self.client
            )
            self.fleet.set_kubelet_port(int(getattr(self._api_server, "port", self.cfg.server.port)))
            self.serving_cert = self._serving_cert_manager()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.recorder.run(), name="events")
            if self.serving_cert is not None:
                tg.create_task(self.serving_cert.run(), name="serving-cert")
            self._parts.append(tg.create_task(self.fleet.run(), name="node"))
            await self.fleet.registered.wait()
            self._parts.append(tg.create_task(self.pods.run(), name="pods"))
            self._parts.append(tg.create_task(self.prewarmer.run(), name="cron-prewarm"))
            if self.cfg.punctual.enabled:  # pre-created Jobs of punctual CronJobs (provider/punctual)
                from provider.punctual.controller import PunctualController

                wave = self.pods.worker.holds.wave  # recording an instant waits for this node's wave
                punctual = PunctualController(
                    self.cfg.punctual,
                    self.client,
                    self.recorder,
                    node_labels(primary),
                    node_taints(primary),
                    election=self.cfg.leader_election,
                    identity=f"{primary.name}_{uuid.uuid4().hex[:6]}",
                    wave_idle=wave.idle,
                )
                self.punctual = punctual
                self._parts.append(tg.create_task(punctual.run(), name="punctual"))
            if self.cfg.placement.enabled:  # webhook and/or fast binder (provider/placement)
                from provider.placement.service import PlacementService

                placement = PlacementService(self.cfg.placement, self.client)
                self._parts.append(tg.create_task(placement.run(), name="placement"))

    async def wait(self) -> None:
        """Until the node stops on its own (a fatal error)."""
        if self._task is not None:
            await self._task

    async def stop(self, close_backend: bool = True) -> None:
        """Cancel every task and close clients; containers keep running (like kubelet). Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self.pods is not None:
            self.pods.close()
        if self._api_server is not None:
            close = getattr(self._api_server, "close", None) or getattr(self._api_server, "stop", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    result = close()
                    if asyncio.iscoroutine(result):
                        await result
            self._api_server = None
        if close_backend and self._own_backend:
            await self.backend.close()
        for c in (self.lease_client, self.events_client, self.client):
            if c is not None:
                await c.close()
        if self._dirs is not None:
            self._dirs.release()
            self._dirs = None

    async def shutdown(self, grace: float = 20.0) -> int:
        """Graceful stop (SIGTERM): no new work, every container left running, the Node says so.

        Pod syncs in flight finish (up to half the grace) but no new one starts; then the node's
        loops stop (status, node lease, informer, prewarming) and the Node's Ready condition turns
        False with reason WarmletStopped. Returns how many pods were left running.
        """
        running: dict[str, int] = {}
        if self.pods is not None:
            await self.pods.quiesce(grace / 2)
            running = pods_per_node(
                [
                    p
                    for p in self.pods.informer.pods.values()
                    if (p.get("status") or {}).get("phase") == "Running"
                    and not (p.get("metadata") or {}).get("deletionTimestamp")
                ],
                [c.name for c in self.node_cfgs],
            )
        parts, self._parts = self._parts, []
        for t in parts:
            t.cancel()
        await asyncio.gather(*parts, return_exceptions=True)
        if self.fleet is not None:
            try:
                await asyncio.wait_for(self.fleet.mark_stopped(running), timeout=grace / 4)
            except Exception as e:
                log.warning("could not mark the nodes stopped err=%r", e)
        if self.recorder is not None:
            await self.recorder.flush(within=min(2.0, grace / 10))
        await self.stop()
        left = sum(running.values())
        log.info("warmlet stopped gracefully name=%s pods_left_running=%d", self.cfg.node.name, left)
        return left

    async def crash(self) -> None:
        """Stop abruptly as a SIGKILL would (tests): no cleanup, backend left as is."""
        await self.stop(close_backend=False)


EXIT_OK = 0
EXIT_ERROR = 1
EXIT_LOST_LEADERSHIP = 3  # a supervisor restarts the process; it comes back as a standby


def _elector(cfg: WarmletConfig, client: KubeClient) -> LeaderElector:
    le = cfg.leader_election
    identity = le.identity or f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    return LeaderElector(
        client,
        le.lease_name or f"{cfg.node.name}-warmlet-leader",
        le.namespace,
        identity,
        le.lease_duration_seconds,
        le.renew_deadline_seconds,
        le.retry_period_seconds,
    )


async def _first(*aws: Any) -> set[asyncio.Future[Any]]:
    """Run coroutines/tasks until the first completes; cancel and await the others (no orphans)."""
    tasks = {asyncio.ensure_future(a) for a in aws}
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        done, pending = set(), tasks
        raise
    finally:
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return done


async def _run(cfg: WarmletConfig, stop: asyncio.Event) -> int:
    elector: LeaderElector | None = None
    el_client: KubeClient | None = None
    try:
        if cfg.leader_election.enabled:
            # Standby: nothing but Lease reads until we hold it (no Node, pod or CRI writes, no port).
            el_client = await KubeClient.from_kubeconfig(
                str(cfg.kubeconfig) if cfg.kubeconfig else None, on_error=record_api_error, max_connections=2
            )
            elector = _elector(cfg, el_client)
            acquire = asyncio.ensure_future(elector.acquire())
            await _first(acquire, stop.wait())
            if not acquire.done() or acquire.cancelled():
                log.info("warmlet standby stopped name=%s", cfg.node.name)
                return EXIT_OK
            acquire.result()
        return await _lead(cfg, stop, elector)
    finally:
        if elector is not None:
            await elector.release()
        if el_client is not None:
            await el_client.close()


async def _lead(cfg: WarmletConfig, stop: asyncio.Event, elector: LeaderElector | None) -> int:
    """Run the node until SIGTERM (graceful), a fatal error, or lost leadership (abrupt)."""
    node = WarmletNode(cfg)
    if elector is None:
        LEADER.set(1)  # a lone process runs its node: graphs of warmlet_leader stay meaningful

    async def run_node() -> None:
        await node.start(within=300)
        await node.wait()

    runner = asyncio.ensure_future(run_node())
    stopper = asyncio.ensure_future(stop.wait())
    holder = asyncio.ensure_future(elector.hold()) if elector is not None else None
    try:
        done, _ = await asyncio.wait(
            {t for t in (runner, stopper, holder) if t is not None}, return_when=asyncio.FIRST_COMPLETED
        )
        if holder is not None and holder in done:
            # Another process may be leader by now: stop at once, write nothing more (not even
            # the pool state file, which the new leader owns), let a supervisor restart us.
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await node.crash()
            log.error("warmlet stopping: leadership lost name=%s", cfg.node.name)
            return EXIT_LOST_LEADERSHIP
        if stopper in done:
            log.info("warmlet shutting down (signal) name=%s", cfg.node.name)
            if node.node is not None and node.node.registered.is_set():
                await node.shutdown()  # stop taking work, leave pods running, say so on the Node
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await node.stop()
            return EXIT_OK
        err = runner.exception() if not runner.cancelled() else None
        log.error("warmlet stopped on an error name=%s err=%r", cfg.node.name, err)
        await node.stop()
        return EXIT_ERROR
    finally:
        for t in (runner, stopper, holder):
            if t is not None and not t.done():
                t.cancel()
        await asyncio.gather(*(t for t in (runner, stopper, holder) if t is not None), return_exceptions=True)


async def run_forever(cfg: WarmletConfig) -> int:
    """The CLI's entry point: run until SIGTERM/SIGINT (exit 0), a fatal error (1) or lost
    leadership (3). SIGTERM stops gracefully: containers keep running (see WarmletNode.shutdown)."""
    setup_logging(cfg.log_format, cfg.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _run(cfg, stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
