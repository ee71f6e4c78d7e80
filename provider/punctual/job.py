"""The held Job: the Job the CronJob controller would create at an instant, plus the hold.

What the controller makes (``getJobFromTemplate2`` in pkg/controller/cronjob/utils.go, v1.36):
name ``<cronjob>-<instant in Unix minutes>``, the job template's labels and annotations plus
``batch.kubernetes.io/cronjob-scheduled-timestamp`` (the instant in the CronJob's zone, RFC 3339),
the template's spec, and a controller ownerReference to the CronJob. warmlet adds (the shared
contract with the node side): the Job annotation ``warmlet.io/punctual-precreated: "true"``, on
the pod template the annotation ``warmlet.io/start-at`` (the instant, RFC 3339 UTC with
milliseconds) and a *required* node affinity ``warmlet.io/holds-start In ["true"]``, and
``warmlet.io/punctual-spec-hash`` (what it was made from: a changed template replaces it).

The ownerReference is created *not* as controller and flipped to controller once the Job is in
the CronJob's ``status.active`` (docs/design.md explains why: no ``UnexpectedJob`` warning).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping
from datetime import tzinfo
from typing import Any

from provider.punctual.schedule import scheduled_timestamp, start_at

JSON = dict[str, Any]

OPT_IN = "warmlet.io/punctual"
LEAD = "warmlet.io/punctual-lead-seconds"
PRECREATED = "warmlet.io/punctual-precreated"
SPEC_HASH = "warmlet.io/punctual-spec-hash"
START_AT = "warmlet.io/start-at"
ACTIVE_DEADLINE = "warmlet.io/punctual-active-deadline-seconds"  # the template's, before the lead was added
HOLDS_START = "warmlet.io/holds-start"
SCHEDULED_TIMESTAMP = "batch.kubernetes.io/cronjob-scheduled-timestamp"
# When warmlet took a held Job back (epoch seconds): it is deleted only a moment after that
RELEASED_AT = "warmlet.io/punctual-released-at"


def job_name(cronjob_name: str, instant: float) -> str:
    return f"{cronjob_name}-{int(instant // 60)}"


def owner_ref(cronjob: Mapping[str, Any], controller: bool) -> JSON:
    """metav1.NewControllerRef(cj, CronJob) (``controller: False`` before adoption)."""
    meta = cronjob.get("metadata") or {}
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def with_hold(pod_template: Mapping[str, Any], instant: float) -> JSON:
    """The pod template with the start-at annotation and the required holds-start affinity.

    Required terms are ORed, so the requirement is added to every non-empty term (an empty term
    matches no node and stays so); without terms it becomes the one term."""
    tmpl = copy.deepcopy(dict(pod_template))
    meta = tmpl.setdefault("metadata", {}) or {}
    tmpl["metadata"] = meta
    meta["annotations"] = {**(meta.get("annotations") or {}), START_AT: start_at(instant)}
    spec = tmpl.setdefault("spec", {})
    need = {"key": HOLDS_START, "operator": "In", "values": ["true"]}
    affinity = spec.setdefault("affinity", {}) or {}
    spec["affinity"] = affinity
    node_aff = affinity.setdefault("nodeAffinity", {}) or {}
    affinity["nodeAffinity"] = node_aff
    required = node_aff.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = list(required.get("nodeSelectorTerms") or [])
    if not terms:
        terms = [{"matchExpressions": [need]}]
    else:
        out = []
        for term in terms:
            term = dict(term)
            if term.get("matchExpressions") or term.get("matchFields"):
                term["matchExpressions"] = [*(term.get("matchExpressions") or []), need]
            out.append(term)
        terms = out
    node_aff["requiredDuringSchedulingIgnoredDuringExecution"] = {**required, "nodeSelectorTerms": terms}
    return tmpl


def spec_hash(labels: Mapping[str, str], annotations: Mapping[str, str], spec: Mapping[str, Any]) -> str:
    raw = json.dumps({"l": labels, "a": annotations, "s": spec}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def held_job(cronjob: Mapping[str, Any], instant: float, tz: tzinfo, created_at: float | None = None) -> JSON:
    """The Job to create for ``instant`` (owner reference not yet controller).

    ``created_at`` (when it is created): the Job controller counts ``activeDeadlineSeconds`` from
    the Job's ``status.startTime``, set when it first sees the Job, i.e. up to the lead before
    the instant; so the lead is added to it (plus 1 s for startTime's truncation to the second),
    making the deadline fall at instant + the template's value, never earlier. The template's
    value is kept in ``warmlet.io/punctual-active-deadline-seconds``. The spec hash is of the Job
    before that, so it does not depend on when the Job was made."""
    meta = cronjob.get("metadata") or {}
    template = (cronjob.get("spec") or {}).get("jobTemplate") or {}
    tmeta = template.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    annotations = {
        **(tmeta.get("annotations") or {}),
        SCHEDULED_TIMESTAMP: scheduled_timestamp(instant, tz),
        PRECREATED: "true",
    }
    spec = copy.deepcopy(dict(template.get("spec") or {}))
    spec["template"] = with_hold(spec.get("template") or {}, instant)
    annotations[SPEC_HASH] = spec_hash(labels, annotations, spec)
    deadline = spec.get("activeDeadlineSeconds")
    if deadline is not None and created_at is not None:
        spec["activeDeadlineSeconds"] = int(deadline) + max(0, math.ceil(instant - created_at)) + 1
        annotations[ACTIVE_DEADLINE] = str(int(deadline))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(str(meta.get("name", "")), instant),
            "namespace": meta.get("namespace", "default"),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_ref(cronjob, controller=False)],
        },
        "spec": spec,
    }


def is_held(job: Mapping[str, Any]) -> bool:
    return ((job.get("metadata") or {}).get("annotations") or {}).get(PRECREATED) == "true"


def owner_uid(job: Mapping[str, Any]) -> str:
    """The uid of the CronJob the Job belongs to (controller or not), "" if none."""
    for ref in (job.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == "CronJob" and ref.get("apiVersion", "").startswith("batch/"):
            return str(ref.get("uid", ""))
    return ""


def is_controlled(job: Mapping[str, Any], cronjob_uid: str) -> bool:
    return any(
        ref.get("controller") and ref.get("uid") == cronjob_uid
        for ref in (job.get("metadata") or {}).get("ownerReferences") or []
    )


def controller_refs(job: Mapping[str, Any], cronjob_uid: str) -> list[JSON]:
    """The Job's ownerReferences with the one to the CronJob made the controller (adoption)."""
    out = []
    for ref in (job.get("metadata") or {}).get("ownerReferences") or []:
        ref = dict(ref)
        if ref.get("uid") == cronjob_uid:
            ref["controller"] = True
        out.append(ref)
    return out


def job_ref(job: Mapping[str, Any]) -> JSON:
    """The ObjectReference the controller appends to ``status.active`` (ref.GetReference)."""
    meta = job.get("metadata") or {}
    return {
        "kind": "Job",
        "namespace": meta.get("namespace", ""),
        "name": meta.get("name", ""),
        "uid": meta.get("uid", ""),
        "apiVersion": "batch/v1",
        "resourceVersion": meta.get("resourceVersion", ""),
    }


def _pointer(key: str) -> str:
    """One JSON-pointer segment (RFC 6901: ``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return key.replace("~", "~0").replace("/", "~1")


def owner_patch(
    uid: str, refs: list[JSON], annotations: Mapping[str, str], cached: Mapping[str, Any]
) -> list[JSON]:
    """A JSON patch that replaces a Job's ownerReferences (and sets ``annotations``) only if its
    uid and its ownerReferences are still those of ``cached`` (the Job as last watched).

    The precondition is on what the write decides about, not on the resourceVersion: the Job
    controller rewrites a new Job's status several times in its first seconds, and a
    resourceVersion precondition lost that race again and again (2,000 held Jobs: 5,500 conflicts,
    up to the instant itself). A failed ``test`` is a 422 from the API server: the cache is behind
    on the owners, and the next pass decides again."""
    meta = cached.get("metadata") or {}
    ops: list[JSON] = [{"op": "test", "path": "/metadata/uid", "value": uid}]
    current = meta.get("ownerReferences")
    if current is None:
        ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": refs})
    else:
        ops.append({"op": "test", "path": "/metadata/ownerReferences", "value": current})
        ops.append({"op": "replace", "path": "/metadata/ownerReferences", "value": refs})
    if annotations and meta.get("annotations") is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": dict(annotations)})
    elif annotations:
        ops.extend(
            {"op": "add", "path": f"/metadata/annotations/{_pointer(k)}", "value": v}
            for k, v in annotations.items()
        )
    return ops
