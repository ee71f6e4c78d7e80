#!/usr/bin/env bash
# Build metrics-server (sigs.k8s.io/metrics-server/cmd/metrics-server) of a pinned release from
# the Go module proxy, for the test bed's metrics-server (testbed/metrics_server.py: it scrapes
# warmlet's kubelet API with full TLS verification, and `kubectl top` answers through the API
# server's aggregation layer).
#
# Into the cached bin dir of the cluster binaries ($WARMLET_CACHE/k8s-<version>/bin), built as the
# project's Makefile builds it (static, -trimpath, its version stamped), with exactly the
# requirements of its own go.mod (`go install module@version`). Cached: a second run builds
# nothing. The module proxy is the first URL of `go env GOPROXY` (scripts/goproxy.sh); the Go
# toolchain is the local one, or the one scripts/build-cluster-bins.sh fetched into the cache.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/progress.sh
source "$HERE/progress.sh"
# shellcheck source=scripts/goproxy.sh
source "$HERE/goproxy.sh"

K8S_VERSION="${WARMLET_K8S_VERSION:-v1.36.3}"
MS_VERSION="${WARMLET_METRICS_SERVER_VERSION:-v0.8.0}"
CACHE="${WARMLET_CACHE:-$HOME/.cache/warmlet}"
OUT="$CACHE/k8s-$K8S_VERSION/bin"
LOGDIR="$CACHE/logs"
# the binary answers --version with the release it was built from (stamped below)
if [[ -x "$OUT/metrics-server" && "$("$OUT/metrics-server" --version 2>/dev/null)" == "$MS_VERSION" ]]; then
  echo "metrics-server $MS_VERSION cached in $OUT"
  exit 0
fi

use_go_and_module_proxy || exit $?
# `go install pkg@version` honours the release's own go.mod; with GOTOOLCHAIN=auto (the default)
# Go fetches the toolchain that go.mod asks for from the same proxy when the local one is older.

PKG=k8s.io/client-go/pkg  # where its Makefile stamps the version
LDFLAGS="-s -w -X $PKG/version.gitVersion=$MS_VERSION"
mkdir -p "$OUT"
run_logged "building metrics-server $MS_VERSION into $OUT" \
  "about 3-6 min on 2 cores (this machine: $(nproc) cores); first time only" \
  "$LOGDIR/go-build-metrics-server.log" \
  env GOBIN="$OUT" nice go install -trimpath -ldflags "$LDFLAGS" \
  "sigs.k8s.io/metrics-server/cmd/metrics-server@$MS_VERSION"
[[ -x "$OUT/metrics-server" ]] || { echo "build finished but $OUT/metrics-server is missing" >&2; exit 1; }
echo "built: $OUT/metrics-server $("$OUT/metrics-server" --version)"
