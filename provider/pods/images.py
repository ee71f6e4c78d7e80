"""Pulling a container's image before it is created (kubelet's image manager, small).

Pull failures wait with back-off (ImagePullBackOff, 10 s doubling to 300 s); references that can
never be pulled (InvalidImageName, ErrImageNeverPull) keep their own reason without back-off.

Credentials: the pod's image pull secrets (provider/pods/pull_secrets.py) matched to the image
(provider/credentials.py) go with every ensure_image, so the backend can both authenticate the
pull and refuse a pod the use of a private image other credentials pulled (KEP-2535).
"""

from __future__ import annotations

from common.clock import SYSTEM, Clock
from provider.backoff import Backoff
from provider.events import NORMAL, WARNING, EventRecorder
from provider.pods.pull_secrets import pull_secrets
from provider.pods.state import JSON, PodState
from provider.resolve_source import ObjectSource
from provider.status import Waiting
from sandbox.backend import Backend, BackendError, ContainerSpec, RegistryCredential

# Image errors that are not pull failures: shown as their own reason, never as ImagePullBackOff.
PERSISTENT_IMAGE_ERRORS = frozenset({"InvalidImageName", "ErrImageNeverPull"})


class ImagePuller:
    def __init__(
        self,
        backend: Backend,
        events: EventRecorder,
        pulls: Backoff,
        clock: Clock = SYSTEM,
        *,
        source: ObjectSource | None = None,
    ) -> None:
        self.backend = backend
        self.events = events
        self.pulls = pulls
        self.clock = clock
        self.source = source  # where pull secrets are read (None: anonymous pulls only)

    async def credentials(self, pod: JSON, image: str) -> list[RegistryCredential]:
        """The pod's credentials matching ``image``, in kubelet's order; Warning events for pull
        secrets that are missing or do not parse (the pull is attempted anyway, like kubelet)."""
        if self.source is None:
            return []
        found = await pull_secrets(self.source, pod)
        for reason, message in found.warnings():
            self.events.record(pod, WARNING, reason, message)
        return found.keyring.lookup(image)

    async def ensure(self, pod: JSON, st: PodState, c: ContainerSpec) -> tuple[Waiting, float] | None:
        """None when the image is there; else why the container waits and when to try again."""
        uid = pod["metadata"]["uid"]
        key = f"{uid}/image/{c.name}"
        now = self.clock.time()
        err = st.image_errors.get(key)
        left = self.pulls.remaining(key, err[1], now) if err and err[1] >= 0 else 0.0
        if err and left > 0:
            msg = f'Back-off pulling image "{c.image}": {err[0]}'
            self.events.record(pod, NORMAL, "BackOff", msg)
            return Waiting("ImagePullBackOff", msg), left
        t0 = self.clock.monotonic()
        try:
            creds = await self.credentials(pod, c.image)
            result = await self.backend.ensure_image(c.image, c.pull_policy, creds)
        except BackendError as e:
            delay = self.pulls.next(key, now)
            if e.reason in PERSISTENT_IMAGE_ERRORS:
                # The reference itself is unusable (or pulling is forbidden): no pull happened, so
                # like kubelet show the reason as is (no ImagePullBackOff); events only once.
                if st.image_errors.get(key, ("", 0.0))[0] != e.message:
                    self.events.record(pod, WARNING, "InspectFailed", e.message)
                    self.events.record(pod, WARNING, "Failed", f"Error: {e.reason}")
                st.image_errors[key] = (e.message, -1.0)
                return Waiting(e.reason, e.message), delay
            st.image_errors[key] = (e.message, now)
            self.events.record(pod, WARNING, "Failed", e.message)
            self.events.record(pod, WARNING, "Failed", f"Error: {e.reason}")
            return Waiting(e.reason, e.message), delay
        st.image_errors.pop(key, None)
        self.pulls.reset(key)
        if result.pulled:
            st.pulled_any = True
            self.events.record(pod, NORMAL, "Pulling", f'Pulling image "{c.image}"')
            self.events.record(
                pod,
                NORMAL,
                "Pulled",
                f'Successfully pulled image "{c.image}" in {self.clock.monotonic() - t0:.3f}s. '
                f"Image size: {result.size_bytes} bytes.",
            )
        else:
            self.events.record(
                pod, NORMAL, "Pulled", f'Container image "{c.image}" already present on machine'
            )
        return None
