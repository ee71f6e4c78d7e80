"""The node Lease in kube-node-lease: the heartbeat the node lifecycle controller watches.

Runs on its own task and its own KubeClient clone (small connection budget), so a pod
burst can never delay renewals and make the node NotReady.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from common.clock import SYSTEM, Clock
from common.retry import Backoff, periodic
from provider.kubeclient import ApiError, KubeClient
from provider.metrics import NODE_LEASE_RENEWALS
from provider.timefmt import micro_time

log = logging.getLogger(__name__)
JSON = dict[str, Any]
NAMESPACE = "kube-node-lease"
# a failed renewal is retried fast (kubelet: 200 ms doubling up to 7 s) so the lease does not expire
RENEW_RETRY: Final = Backoff(base=0.2, cap=7.0, jitter=0.0)


class LeaseKeeper:
    def __init__(
        self,
        client: KubeClient,
        node_name: str,
        node_uid: Callable[[], str],
        duration: int = 40,
        interval: float = 10.0,
        clock: Clock = SYSTEM,
        phase: float | None = None,
    ) -> None:
        self._client = client
        self._phase = phase  # the first wait (after the first renewal); None: the interval
        self._clock = clock
        self._name = node_name
        self._node_uid = node_uid
        self._duration = duration
        self._interval = interval
        self._lease: JSON | None = None
        self.last_renewed = 0.0

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{self._name}"

    def _body(self, now: float) -> JSON:
        meta: JSON = {"name": self._name, "namespace": NAMESPACE}
        uid = self._node_uid()
        if uid:
            meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": self._name, "uid": uid}]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self._name,
                "leaseDurationSeconds": self._duration,
                "renewTime": micro_time(now),
            },
        }

    async def renew(self) -> None:
        now = self._clock.time()
        if self._lease is None:
            try:
                self._lease = await self._client.get(self.path)
            except ApiError as e:
                if not e.not_found:
                    raise
                self._lease = await self._client.post(
                    f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases", self._body(now)
                )
                self.last_renewed = now
                return
        body = self._body(now)
        body["metadata"]["resourceVersion"] = self._lease["metadata"]["resourceVersion"]
        owner = body["metadata"].get("ownerReferences")
        if not owner:
            body["metadata"]["ownerReferences"] = self._lease["metadata"].get("ownerReferences")
        try:
            self._lease = await self._client.put(self.path, body)
        except ApiError as e:
            self._lease = None  # conflict or deleted: re-read (or recreate) next time
            if e.conflict or e.not_found:
                await self.renew()
                return
            raise
        self.last_renewed = now

    async def _renew_once(self) -> None:
        try:
            await self.renew()
        except Exception:
            NODE_LEASE_RENEWALS.labels(result="error").inc()
            raise
        NODE_LEASE_RENEWALS.labels(result="ok").inc()

    async def run(self) -> None:
        """Renew every interval; after a failure retry fast (RENEW_RETRY) until it works again."""
        first = [self._interval if self._phase is None else self._phase]

        def wait() -> float:  # read after each successful renewal: the phase once, then the interval
            return first.pop() if first else self._interval

        await periodic(
            self._renew_once,
            wait,
            clock=self._clock,
            backoff=RENEW_RETRY,
            on_error=lambda e, n: log.warning("lease renewal failed attempt=%d err=%r", n, e),
        )
