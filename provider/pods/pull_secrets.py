"""A pod's image pull secrets, fetched and turned into its keyring (kubelet's getPullSecretsForPod).

The secrets are the pod's ``imagePullSecrets``, as for kubelet: the ServiceAccount admission plugin
already copied the ServiceAccount's into every pod that named none when it was created. A pod
template prewarmed ahead of its pods (CronJob) was not admitted, so there the ServiceAccount's are
read by the same rule (``service_account_fallback``), so prewarm pulls use the credentials the
pods will have. A secret that cannot be read is skipped with
kubelet's ``FailedToRetrieveImagePullSecret`` Warning (the pull is attempted anyway); one whose
content does not parse is skipped with a Warning saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from provider.credentials import InvalidPullSecret, Keyring, KeyringEntry, secret_entries
from provider.kubeclient import ApiError
from provider.resolve_source import ObjectSource
from sandbox.backend import RegistryCredential

log = logging.getLogger("warmlet.pull_secrets")
JSON = dict[str, Any]


@runtime_checkable
class ServiceAccountSource(Protocol):
    """Optional for an ObjectSource: read a ServiceAccount (its ``imagePullSecrets``)."""

    async def serviceaccount(self, namespace: str, name: str) -> JSON | None: ...


@dataclass
class PullSecrets:
    """What was found for one pod: its keyring and the problems to report."""

    keyring: Keyring = field(default_factory=Keyring)
    missing: list[str] = field(default_factory=list)  # names that could not be read
    invalid: list[str] = field(default_factory=list)  # "name: why" of secrets that do not parse

    def warnings(self) -> list[tuple[str, str]]:
        """(reason, message) of the Warning events kubelet records (missing) and ours (invalid)."""
        out = []
        if self.missing:
            out.append(
                (
                    "FailedToRetrieveImagePullSecret",
                    f"Unable to retrieve some image pull secrets ({', '.join(self.missing)}); "
                    "attempting to pull the image may not succeed.",
                )
            )
        if self.invalid:
            out.append(
                (
                    "InvalidImagePullSecret",
                    f"Unable to parse some image pull secrets ({'; '.join(self.invalid)}); "
                    "attempting to pull the image may not succeed.",
                )
            )
        return out


def secret_names(spec: Mapping[str, Any]) -> list[str]:
    """Names in ``imagePullSecrets`` in order, empty names skipped, duplicates once."""
    names = [str(r.get("name") or "") for r in spec.get("imagePullSecrets") or [] if isinstance(r, Mapping)]
    return list(dict.fromkeys(n for n in names if n))


async def service_account_secret_names(
    source: ObjectSource, namespace: str, spec: Mapping[str, Any]
) -> list[str]:
    """The pod's ServiceAccount's ``imagePullSecrets``; [] when it cannot be read."""
    if not isinstance(source, ServiceAccountSource):
        return []
    sa_name = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")
    try:
        sa = await source.serviceaccount(namespace, sa_name)
    except ApiError as e:
        log.info("service account not readable namespace=%s name=%s error=%s", namespace, sa_name, e)
        return []
    return secret_names(sa or {})


async def pull_secrets(
    source: ObjectSource, pod: Mapping[str, Any], *, service_account_fallback: bool = False
) -> PullSecrets:
    """Fetch the pod's pull secrets and build its keyring (a template naming none: its
    ServiceAccount's when ``service_account_fallback``)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    namespace = str(meta.get("namespace") or "default")
    names = secret_names(spec)
    if not names and service_account_fallback:
        names = await service_account_secret_names(source, namespace, spec)
    found = PullSecrets()
    parsed: list[list[KeyringEntry]] = []
    for name in names:
        try:
            secret = await source.secret(namespace, name)
        except ApiError as e:
            log.info("pull secret not readable namespace=%s name=%s error=%s", namespace, name, e)
            secret = None
        if secret is None:
            found.missing.append(name)
            continue
        try:
            entries = secret_entries(secret)
        except InvalidPullSecret as e:
            found.invalid.append(f"{name}: {e}")
            continue
        if entries is not None:
            parsed.append(entries)
    found.keyring = Keyring.of(parsed)
    return found


async def image_credentials(
    source: ObjectSource, pod: Mapping[str, Any], images: list[str]
) -> dict[str, list[RegistryCredential]]:
    """Per image, the pod's (or pod template's) matching credentials: what a prewarm pulls with,
    so a private image is cached with the credentials its pods will present."""
    keyring = (await pull_secrets(source, pod, service_account_fallback=True)).keyring
    return {image: creds for image in dict.fromkeys(images) if (creds := keyring.lookup(image))}
