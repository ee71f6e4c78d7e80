"""The one image-reference parser: the docker reference grammar as kubelet and containerd
normalise it (github.com/distribution/reference ``ParseNormalizedNamed``).

- The first path component is a registry host when it has a ``.`` or ``:`` (a port), is
  ``localhost``, or has an upper-case letter; otherwise the registry is ``docker.io``.
- ``index.docker.io`` is ``docker.io``; a one-component name on ``docker.io`` gets ``library/``.
- The tag defaults to ``latest`` unless the reference is pinned by digest; a reference may carry
  both a tag and a digest (the digest wins when pulling).
- The repository (everything but the host) must be lower case; the name may not be longer than
  255 characters.

Neutral (``common``): the runtime side turns :class:`InvalidImageReference` into its own
``InvalidImageNameError``; the messages are kubelet's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
MAX_NAME_LENGTH = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_DOMAIN = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE_RE = re.compile(
    rf"^(?P<name>(?:(?P<domain>{_DOMAIN})/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$"
)


class InvalidImageReference(ValueError):
    """A reference a runtime would refuse (kubelet's InvalidImageName)."""


@dataclass(frozen=True)
class ImageReference:
    """A parsed, normalised image reference (``docker.io/library/`` added as containerd does)."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def repository(self) -> str:
        """``domain/path``, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def version(self) -> str:
        """What is pulled: ``@<digest>`` when pinned, else ``:<tag>`` (``:latest`` by default)."""
        return f"@{self.digest}" if self.digest else f":{self.tag or DEFAULT_TAG}"

    @property
    def normalized(self) -> str:
        """The fully qualified reference; a missing tag becomes ``latest`` unless pinned by digest."""
        s = self.repository
        if self.tag or not self.digest:
            s += f":{self.tag or DEFAULT_TAG}"
        if self.digest:
            s += f"@{self.digest}"
        return s


def _split_domain(name: str) -> tuple[str, str]:
    """Docker's rule: the first component is a domain if it has a '.' or ':', is localhost or is
    not all lower case."""
    first, sep, rest = name.partition("/")
    if sep and (("." in first or ":" in first) or first == "localhost" or first != first.lower()):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def _lower_path_only(image: str) -> str:
    first, sep, rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first + "/" + rest.lower()
    return image.lower()


def _invalid(image: str, why: str = "invalid reference format") -> InvalidImageReference:
    return InvalidImageReference(f'Failed to apply default image tag "{image}": {why}')


def parse_image_reference(image: str) -> ImageReference:
    """Validate and normalise ``image``; raise :class:`InvalidImageReference` like kubelet."""
    if not image or image != image.strip():
        raise _invalid(image)
    m = _REFERENCE_RE.match(image)
    if m is None:
        # the hint distribution/reference gives for the most common mistake
        if image.lower() != image and _REFERENCE_RE.match(_lower_path_only(image)):
            raise _invalid(image, "invalid reference format: repository name must be lowercase")
        raise _invalid(image)
    name = m.group("name")
    if len(name) > MAX_NAME_LENGTH:
        raise _invalid(image, "repository name must not be more than 255 characters")
    domain, path = _split_domain(name)
    return ImageReference(domain=domain, path=path, tag=m.group("tag") or "", digest=m.group("digest") or "")


def normalize_reference(image: str) -> str:
    """The normalised reference string, or ``image`` unchanged when it does not parse."""
    try:
        return parse_image_reference(image).normalized
    except InvalidImageReference:
        return image
