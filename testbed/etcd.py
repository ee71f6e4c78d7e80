"""etcd's gRPC gateway on loopback, for fault injection behind the apiserver's back."""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.request
from dataclasses import dataclass

from testbed.util import kv

log = logging.getLogger("testbed.etcd")


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


@dataclass(frozen=True)
class EtcdGateway:
    port: int

    def call(self, method: str, body: dict[str, object], timeout: float = 10) -> dict[str, object]:
        """POST to etcd's gRPC gateway (``/v3/kv/range``, ``/v3/kv/put``, ``/v3/kv/compaction``...)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v3/{method.lstrip('/')}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            out: dict[str, object] = json.loads(r.read() or b"{}")
        return out

    def revision(self) -> int:
        """etcd's current revision (what the apiserver calls resourceVersion)."""
        r = self.call("kv/range", {"key": _b64(b"/registry/"), "limit": 1})
        header = r.get("header") or {}
        assert isinstance(header, dict)
        return int(header.get("revision", 0))

    def bump_and_compact(self, writes: int = 5) -> int:
        """Write a few throwaway keys directly into etcd, then compact up to the newest revision.

        Every resourceVersion a client saw before is then compacted away: a watch resumed from one
        (once the apiserver's watch cache no longer has it, e.g. after an apiserver restart) is
        answered 410 Gone. Returns the compaction revision.
        """
        for i in range(writes):
            self.call("kv/put", {"key": _b64(f"/warmlet-faults/bump-{i}"), "value": _b64(str(time.time()))})
        rev = self.revision()
        self.call("kv/compaction", {"revision": rev, "physical": True}, timeout=30)
        log.info(kv("etcd compacted", revision=rev))
        return rev
