"""Registry credentials from image pull secrets, matched to an image the way kubelet matches them.

Pure (no I/O): :func:`secret_entries` parses a ``kubernetes.io/dockerconfigjson`` or
``kubernetes.io/dockercfg`` Secret into keyring entries, :class:`Keyring` answers which
credentials apply to an image (kubelet's ``BasicDockerKeyring``, pkg/credentialprovider):

- an entry's key is its registry location with the scheme stripped and a ``/v1/`` or ``/v2/``
  path prefix dropped (``https://index.docker.io/v1/`` is ``index.docker.io``);
- an entry matches an image when the ports are equal, the hosts have as many ``.``-separated
  labels and each label matches its glob (``*.example.com``), and the image's path starts with the
  entry's path (a plain string prefix, as kubelet checks it);
- matching keys are tried in reverse lexicographic order (longer, more specific paths first), and
  within one key in the order of the pod's secrets;
- nothing matched and the image is on Docker Hub: the ``index.docker.io`` entry applies.

Each credential carries a fingerprint (sha256 of its content, like kubelet's AuthConfigHash) so
the image cache can tell whether a pod presents credentials an image was pulled with (KEP-2535).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from common.imageref import (
    DEFAULT_DOMAIN,
    LEGACY_DEFAULT_DOMAIN,
    InvalidImageReference,
    parse_image_reference,
)
from sandbox.backend import RegistryCredential

DOCKER_CONFIG_JSON_TYPE = "kubernetes.io/dockerconfigjson"
DOCKER_CONFIG_JSON_KEY = ".dockerconfigjson"
DOCKERCFG_TYPE = "kubernetes.io/dockercfg"
DOCKERCFG_KEY = ".dockercfg"


class InvalidPullSecret(ValueError):
    """A pull secret whose content cannot be read as a docker config."""


@dataclass(frozen=True)
class KeyringEntry:
    """One registry location (``host[:port][/path]``, no scheme) and the credential for it."""

    key: str
    credential: RegistryCredential


# ---------------------------------------------------------------------------- parsing


def decode_auth(field_value: str) -> tuple[str, str]:
    """``base64(user:password)`` (padded or not) -> (user, password), like kubelet."""
    text = field_value.strip()
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        decoded = raw.decode()
    except (binascii.Error, ValueError) as e:
        raise InvalidPullSecret(f"invalid auth field: {e}") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise InvalidPullSecret("unable to parse auth field, must be formatted as base64(username:password)")
    return user, password


def fingerprint(username: str, password: str, email: str = "") -> str:
    """sha256 of the credential's content (kubelet's AuthConfigHash: the same secret content in
    two secrets has one fingerprint)."""
    body = json.dumps({"username": username, "password": password, "email": email}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def entry_key(location: str) -> str | None:
    """The keyring key of a docker config location: scheme stripped, ``/v1/``/``/v2/`` dropped."""
    value = location if location.startswith(("https://", "http://")) else "https://" + location
    try:
        parts = urlsplit(value)
        host = parts.netloc
        _ = parts.port  # validates the port
    except ValueError:
        return None
    path = parts.path
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return host + path if path and path != "/" else host


def parse_docker_config(auths: Mapping[str, Any], source: str) -> list[KeyringEntry]:
    """Entries of a docker config's ``auths`` map (location -> {auth | username/password})."""
    out: list[KeyringEntry] = []
    for location, ident in auths.items():
        if not isinstance(ident, Mapping):
            raise InvalidPullSecret(f"entry {location!r} is not an object")
        user = str(ident.get("username") or "")
        password = str(ident.get("password") or "")
        email = str(ident.get("email") or "")
        if ident.get("auth"):
            user, password = decode_auth(str(ident["auth"]))
        key = entry_key(str(location))
        if key is None:
            continue  # kubelet: "Entry in dockercfg invalid, ignoring"
        cred = RegistryCredential(
            username=user,
            password=password,
            source=source,
            fingerprint=fingerprint(user, password, email),
        )
        out.append(KeyringEntry(key=key, credential=cred))
    return out


def secret_entries(secret: Mapping[str, Any]) -> list[KeyringEntry] | None:
    """The keyring entries of a pull secret; None when the Secret is not a docker config (kubelet
    skips those); raises :class:`InvalidPullSecret` when its content does not parse."""
    meta = secret.get("metadata") or {}
    source = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    data = secret.get("data") or {}
    kind = secret.get("type")
    if kind == DOCKER_CONFIG_JSON_TYPE and data.get(DOCKER_CONFIG_JSON_KEY):
        doc = _decode_json(data[DOCKER_CONFIG_JSON_KEY])
        auths = doc.get("auths") or {} if isinstance(doc, Mapping) else None
    elif kind == DOCKERCFG_TYPE and data.get(DOCKERCFG_KEY):
        auths = _decode_json(data[DOCKERCFG_KEY])
    else:
        return None
    if not isinstance(auths, Mapping):
        raise InvalidPullSecret("docker config is not a JSON object")
    return parse_docker_config(auths, source)


def _decode_json(b64: str) -> Any:
    try:
        return json.loads(base64.b64decode(b64, validate=True))
    except (binascii.Error, ValueError) as e:
        raise InvalidPullSecret(f"error occurred while trying to unmarshal json: {e}") from None


# ---------------------------------------------------------------------------- matching


def _split_schemeless(url: str) -> tuple[str, str]:
    """(host[:port], path) of a schemeless URL as Go's url.Parse sees ``https://`` + it: a
    fragment and a query are cut off first, so host globs with ``?`` end there, as in kubelet."""
    url = url.split("#", 1)[0].split("?", 1)[0]
    netloc, sep, path = url.partition("/")
    return netloc.rpartition("@")[2], sep + path


def _split_host(netloc: str) -> tuple[list[str], str]:
    """Host labels and port (Go's net.SplitHostPort; no port: the whole netloc is the host)."""
    host, port = netloc, ""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end > 0 and netloc[end + 1 : end + 2] == ":":
            host, port = netloc[1:end], netloc[end + 2 :]
    elif netloc.count(":") == 1:
        host, port = netloc.split(":")
    return host.split("."), port


def _glob_re(pattern: str) -> re.Pattern[str] | None:
    """Go's ``filepath.Match`` pattern (``*``, ``?``, ``[...]`` with ``^``, ``\\`` escapes) as a
    regex; None for a malformed pattern (which matches nothing, as in kubelet)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= n:
                return None
            out.append(re.escape(pattern[i]))
        elif c == "[":
            j = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("^", "]") else i + 1)
            if j < 0:
                return None
            body = pattern[i + 1 : j]
            neg = body.startswith("^")
            body = body[1:] if neg else body
            if not body:
                return None
            out.append("[" + ("^" if neg else "") + body.replace("\\", "\\\\") + "]")
            i = j
        else:
            out.append(re.escape(c))
        i += 1
    try:
        return re.compile("".join(out))
    except re.error:
        return None


def urls_match(glob: str, target: str) -> bool:
    """Whether the keyring key ``glob`` covers the schemeless ``target`` (kubelet's URLsMatch)."""
    g_netloc, g_path = _split_schemeless(glob)
    t_netloc, t_path = _split_schemeless(target)
    g_parts, g_port = _split_host(g_netloc)
    t_parts, t_port = _split_host(t_netloc)
    if g_port != t_port or len(g_parts) != len(t_parts):
        return False
    if not t_path.startswith(g_path):
        return False
    for gp, tp in zip(g_parts, t_parts, strict=True):
        rx = _glob_re(gp)
        if rx is None or rx.fullmatch(tp) is None:
            return False
    return True


def repository(image: str) -> str:
    """What kubelet looks credentials up for: the normalised repository without tag or digest
    (``busybox`` -> ``docker.io/library/busybox``); the input when it does not parse."""
    try:
        return parse_image_reference(image).repository
    except InvalidImageReference:
        return image


def _is_default_registry(repo: str) -> bool:
    first, sep, _ = repo.partition("/")
    if not first:
        return False
    if not sep or first in (DEFAULT_DOMAIN, LEGACY_DEFAULT_DOMAIN):
        return True
    return not any(ch in first for ch in ".:")


@dataclass
class Keyring:
    """The credentials of one pod's pull secrets (kubelet's BasicDockerKeyring)."""

    entries: list[KeyringEntry] = field(default_factory=list)

    @classmethod
    def of(cls, secrets: Iterable[list[KeyringEntry]]) -> Keyring:
        return cls([e for entries in secrets for e in entries])

    def lookup(self, image: str) -> list[RegistryCredential]:
        """Credentials to try for ``image``, in kubelet's order; [] means an anonymous pull."""
        repo = repository(image)
        by_key: dict[str, list[RegistryCredential]] = {}
        for e in self.entries:
            by_key.setdefault(e.key, []).append(e.credential)
        out: list[RegistryCredential] = []
        for key in sorted(by_key, reverse=True):
            if urls_match(key, repo):
                out.extend(by_key[key])
        if not out and _is_default_registry(repo):
            out = list(by_key.get(LEGACY_DEFAULT_DOMAIN, []))
        return out
