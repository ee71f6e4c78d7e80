"""Runs the enabled placement parts (webhook, binder) and their shared view in one TaskGroup.

Embedded in ``warmlet run`` (``placement:`` in the node's config) or alone as ``warmlet
placement`` — one instance for a cluster with several warmlet nodes. Several instances are
safe: the webhook is stateless apart from caches, and bindings are idempotent (409 = done).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

from common.clock import SYSTEM, Clock
from common.retry import SLOW_BACKOFF, periodic
from provider.config import PlacementConfig, WarmletConfig
from provider.kubeclient import KubeClient
from provider.placement.binder import FastBinder
from provider.placement.policy import PlacementPolicy
from provider.placement.view import ClusterView
from provider.placement.webhook import (
    PlacementWebhook,
    WebhookServer,
    register,
    start_webhook_server,
    webhook_configuration,
)

log = logging.getLogger(__name__)
REASSERT_SECONDS = 60.0  # the webhook registration is re-asserted this often (a changed CA, an edit)


def policy_from_config(cfg: PlacementConfig) -> PlacementPolicy:
    return PlacementPolicy(
        virtual_node_labels=dict(cfg.virtual_node_labels),
        taint_key=cfg.taint_key,
        jobs=cfg.jobs,
        unannotated=cfg.unannotated,
        peak_fraction=cfg.peak_fraction,
        min_threshold=cfg.min_threshold,
        lease_grace_seconds=cfg.lease_grace_seconds,
        deletion_cost=cfg.deletion_cost,
        scheduler_name=cfg.binder.scheduler_name if cfg.steer_to_binder else None,
    )


class PlacementService:
    """``await start()`` … ``await stop()`` (tests, benches) or ``await run()`` inside a TaskGroup."""

    def __init__(self, cfg: PlacementConfig, client: KubeClient, clock: Clock = SYSTEM) -> None:
        self.cfg = cfg
        self.clock = clock
        self.client = client
        self.bind_client = client.clone(max_connections=max(8, cfg.binder.concurrency))
        self.events_client = client.clone(max_connections=8)
        self.view = ClusterView(client, cfg.virtual_node_labels)
        self.policy = policy_from_config(cfg)
        self.webhook: PlacementWebhook | None = None
        self.server: WebhookServer | None = None
        self.binder: FastBinder | None = None
        self.registered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if cfg.webhook.enabled:
            self.webhook = PlacementWebhook(
                client,
                self.view,
                self.policy,
                budget_seconds=max(0.2, cfg.webhook.timeout_seconds * 0.6),
                peak_window_seconds=cfg.peak_window_seconds,
            )
        if cfg.binder.enabled:
            self.binder = FastBinder(
                self.bind_client,
                self.view,
                cfg.binder,
                cfg.lease_grace_seconds,
                self.events_client,
                cfg.taint_key,
            )

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.view.run(), name="placement-view")
                if self.webhook is not None:
                    self.server = await start_webhook_server(self.cfg.webhook, self.webhook)
                    if self.cfg.webhook.manage_configuration:
                        tg.create_task(self._register(), name="placement-register")
                    else:
                        self.registered.set()
                else:
                    self.registered.set()
                if self.binder is not None:
                    tg.create_task(self.binder.run(), name="placement-binder")
                log.info(
                    "placement started webhook=%s binder=%s scheduler=%s",
                    self.webhook is not None,
                    self.binder is not None,
                    self.cfg.binder.scheduler_name,
                )
        finally:
            if self.server is not None:
                await self.server.close()
                self.server = None
            await self.bind_client.close()
            await self.events_client.close()

    async def _register(self) -> None:
        """Register (retrying with back-off), then re-assert every minute (a changed CA, an edit)."""
        assert self.server is not None
        body = webhook_configuration(self.cfg.webhook, self.server.ca_pem, self.server.url)

        async def assert_registration() -> None:
            await register(self.client, body)
            self.registered.set()

        await periodic(
            assert_registration,
            REASSERT_SECONDS,
            clock=self.clock,
            backoff=SLOW_BACKOFF,
            on_error=lambda e, n: log.warning(
                "placement webhook registration failed failures=%d err=%r", n, e
            ),
        )

    # ------------------------------------------------------------------ standalone
    async def start(self, within: float = 60.0) -> None:
        """Run in the background; returns once the view is synced and the webhook registered."""
        self._task = asyncio.create_task(self.run(), name="placement")
        ready = asyncio.ensure_future(
            asyncio.wait_for(asyncio.gather(self.view.synced.wait(), self.registered.wait()), within)
        )
        done, _ = await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()
            raise RuntimeError("placement stopped during start")
        ready.result()

    async def stop(self) -> None:
        """Stop serving (the registration stays: it fails open) and close the extra clients."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await self.bind_client.close()
        await self.events_client.close()

    @property
    def url(self) -> str:
        return self.server.url if self.server is not None else ""


async def run_placement(cfg: WarmletConfig) -> None:
    """``warmlet placement``: the placement parts alone, until SIGTERM/SIGINT."""
    from provider.logging_setup import setup_logging
    from provider.metrics import record_api_error

    setup_logging(cfg.log_format, cfg.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    client = await KubeClient.from_kubeconfig(
        str(cfg.kubeconfig) if cfg.kubeconfig else None, on_error=record_api_error, max_connections=32
    )
    svc = PlacementService(cfg.placement, client)
    runner: asyncio.Task[Any] = asyncio.create_task(svc.run())
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if runner in done and runner.exception() is not None:
            log.error("placement stopped on an error err=%r", runner.exception())
    finally:
        log.info("placement shutting down")
        for t in (runner, stopper):
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runner
        await svc.stop()
        await client.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
