"""Which credentials pulled each image: kubelet's "ensure secret pulled images" (KEP-2535).

An image warmlet pulled with credentials must not be used by a pod that does not present them:
such a pod would otherwise run a private image it has no right to just because another pod pulled
it first (pull policy IfNotPresent). For every image id warmlet pulled, the record keeps, per
repository it was pulled as, whether an anonymous pull succeeded (anyone may use it) and the
fingerprints of the credentials that succeeded. Kubelet's default policy,
``NeverVerifyPreloadedImages``: an image present but never pulled by warmlet is not verified.

The decision (:func:`must_verify`) is pure; :class:`PullRecords` keeps the records and persists
them (atomically) in the backend's state directory so a restart does not turn every private image
into a "preloaded" one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("warmlet.pull_records")

RECORDS_FILE = "image-pull-records.json"


@dataclass
class RepoRecord:
    """How one repository of one image id was pulled successfully."""

    anonymous: bool = False  # pulled without credentials: accessible to every pod on the node
    fingerprints: set[str] = field(default_factory=set)


def must_verify(records: Mapping[str, RepoRecord] | None, repo: str, fingerprints: Iterable[str]) -> bool:
    """Whether a present image must be pulled again (with the pod's credentials) before the pod may
    use it.

    ``records`` are the image id's records (None: never pulled by warmlet, i.e. preloaded, which
    the default policy does not verify); ``repo`` is the repository the pod asks for and
    ``fingerprints`` those of the pod's matching credentials.
    """
    if records is None:
        return False
    rec = records.get(repo)
    if rec is None:
        return True  # pulled by warmlet, but never as this repository
    if rec.anonymous:
        return False
    return not (rec.fingerprints & set(fingerprints))


class PullRecords:
    """Per image id, per repository: who pulled it. Persisted in ``path`` when given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._records: dict[str, dict[str, RepoRecord]] = {}
        if path is not None:
            self._load(path)

    def get(self, image_id: str) -> Mapping[str, RepoRecord] | None:
        return self._records.get(image_id)

    def record(self, image_id: str, repo: str, fingerprint: str | None) -> None:
        """A pull of ``repo`` that produced ``image_id`` succeeded (fingerprint None: anonymously)."""
        rec = self._records.setdefault(image_id, {}).setdefault(repo, RepoRecord())
        if fingerprint is None:
            if rec.anonymous:
                return
            rec.anonymous = True
        else:
            if fingerprint in rec.fingerprints:
                return
            rec.fingerprints.add(fingerprint)
        self._save()

    def forget(self, image_ids: Iterable[str]) -> None:
        """The images are gone (garbage collected): their records go too."""
        changed = False
        for i in image_ids:
            changed |= self._records.pop(i, None) is not None
        if changed:
            self._save()

    # ------------------------------------------------------------------ persistence

    def _load(self, path: Path) -> None:
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            # Unreadable records: every image pulled before counts as preloaded, like kubelet
            # after losing its records directory.
            log.warning("image pull records unreadable path=%s error=%r", path, e)
            return
        for image_id, repos in (doc.get("images") or {}).items():
            self._records[image_id] = {
                repo: RepoRecord(bool(r.get("anonymous")), set(r.get("fingerprints") or []))
                for repo, r in repos.items()
            }

    def _save(self) -> None:
        if self.path is None:
            return
        doc = {
            "images": {
                image_id: {
                    repo: {"anonymous": r.anonymous, "fingerprints": sorted(r.fingerprints)}
                    for repo, r in repos.items()
                }
                for image_id, repos in self._records.items()
            }
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(doc, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError as e:
            log.warning("image pull records not saved path=%s error=%r", self.path, e)
