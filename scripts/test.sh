#!/usr/bin/env bash
# Second command of the README (and CI): install what is missing, lint, type-check, then all
# test tiers -- unit, then integration and e2e, then faults, then a subset of Kubernetes' own
# [NodeConformance] suite -- against a private test bed. Extra
# arguments go to pytest. Any failure, or a tier that collects no tests (pytest exit 5), fails.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
setup

say "ruff check"
.venv/bin/ruff check .
say "mypy"
.venv/bin/mypy

run_tier() {
  local marker="$1"; shift
  if [[ "$marker" == unit ]]; then
    say "pytest -m '$marker' (pure logic, no services)"
  else
    say "pytest -m '$marker' (starts its own private test bed first, about a minute; logs of a failed session: .warmlet/testbed-logs/)"
  fi
  local rc=0
  .venv/bin/python -m pytest -m "$marker" "$@" || rc=$?
  if ((rc == 5)); then echo "pytest: no tests collected for -m '$marker'" >&2; fi
  return "$rc"
}
t0=$SECONDS
run_tier unit -q "$@"
say "metrics-server of the e2e tier (kubectl top through the aggregation layer): built once from the Go module proxy, then cached"
bash scripts/build-metrics-server.sh
run_tier "integration or e2e" -q -rfEs --durations=15 "$@"
run_tier faults -q -rfEs --durations=15 "$@"
say "Kubernetes' e2e suite of the pinned release (e2e.test, ginkgo, agnhost: built once from the Go module proxy, then cached)"
bash scripts/build-e2e.sh
run_tier conformance -q -rfEs --durations=5 "$@"
say "all tiers passed in $((SECONDS - t0))s"
