"""Placement metrics (default registry: served by the kubelet API's /metrics in ``warmlet run``
and by the webhook server's /metrics in ``warmlet placement``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ADMISSIONS = Counter(
    "warmlet_placement_admissions_total",
    "Pod admissions answered by the placement webhook, by decision and reason",
    ["decision", "reason"],
)
ADMISSION_SECONDS = Histogram(
    "warmlet_placement_admission_duration_seconds",
    "Time to answer one AdmissionReview",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2),
)
WEBHOOK_ERRORS = Counter(
    "warmlet_placement_webhook_errors_total",
    "Admissions answered allowed-without-patch because of an internal error or timeout",
    ["kind"],
)
BINDINGS = Counter(
    "warmlet_binder_bindings_total",
    "Binding attempts of the fast binder by result (bound, conflict, gone, error, unschedulable)",
    ["result"],
)
BINDING_LATENCY = Histogram(
    "warmlet_binder_binding_latency_seconds",
    "Pod first seen by the binder → Binding accepted",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
BINDER_ERRORS = Counter("warmlet_binder_errors_total", "Binder API errors by verb", ["verb"])
