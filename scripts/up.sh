#!/usr/bin/env bash
# First command of the README: install what is missing, bring the one-machine test bed up
# (real control plane, containerd, registry) in the background, then run the demo if present.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
setup
say "starting the test bed"
.venv/bin/python -m testbed up
ENV_FILE="$WARMLET_CACHE/testbed/env"
if .venv/bin/warmlet demo --help >/dev/null 2>&1; then
  say "running: warmlet demo"
  set -a; source "$ENV_FILE"; set +a
  exec .venv/bin/warmlet demo "$@"
fi
cat <<MSG

The test bed is up (warmlet demo is not available yet).
  source $ENV_FILE          # KUBECONFIG, WARMLET_* (containerd socket, registry, images), kubectl on PATH
  kubectl get --raw /readyz
  .venv/bin/python -m testbed status | env | down
MSG
