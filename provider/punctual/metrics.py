"""Prometheus metrics of punctual CronJobs (what a user graphs: Jobs pre-created, how early, and
the held Jobs taken back and why)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PRECREATED = Counter(
    "warmlet_punctual_jobs_precreated_total", "Held Jobs pre-created ahead of a CronJob's instant"
)
PRECREATE_FAILURES = Counter(
    "warmlet_punctual_precreate_failures_total",
    "Held Jobs warmlet could not create (the CronJob then fires the normal way), by HTTP code",
    ["code"],
)
HELD_DELETED = Counter(
    "warmlet_punctual_held_jobs_deleted_total",
    "Jobs deleted by warmlet, by reason (suspended, schedule-changed, template-changed, "
    "cronjob-deleted, forbid, deadline, opted-out, invalid; replaced: a previous run, Replace)",
    ["reason"],
)
LEAD = Histogram(
    "warmlet_punctual_lead_seconds",
    "How long before its instant a held Job was created (the lead achieved)",
    buckets=(1, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600),
)
INSTANTS = Counter(
    "warmlet_punctual_instants_total",
    "Instants warmlet recorded in a CronJob's status (lastScheduleTime) for its held Job",
)
LEADER = Gauge(
    "warmlet_punctual_leader", "1 while this process holds the punctual Lease (punctual.leader_election)"
)
