#!/usr/bin/env bash
# First command of the README: install what is missing, bring the one-machine test bed up
# (real control plane, containerd, registry) in the background, then run the demo if present.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
setup
say "starting the test bed (python -m testbed up: etcd, kube-apiserver, scheduler, controller-manager, containerd, registry; about 10-30 s, more the first time while the OCI images are built)"
.venv/bin/python -m testbed up
ENV_FILE="$WARMLET_CACHE/testbed/env"
if .venv/bin/warmlet demo --help >/dev/null 2>&1; then
  say "running: warmlet demo (it prints each step; Ctrl-C stops it and cleans up)"
  set -a; source "$ENV_FILE"; set +a
  exec .venv/bin/warmlet demo "$@"
fi
cat <<MSG

The test bed is up (warmlet demo is not available yet).
  source $ENV_FILE          # KUBECONFIG, WARMLET_* (containerd socket, registry, images), kubectl on PATH
  kubectl get --raw /readyz
  .venv/bin/python -m testbed status | env | down
MSG
