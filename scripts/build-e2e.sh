#!/usr/bin/env bash
# Build Kubernetes' own end-to-end suite of the pinned release, for `warmlet bench conformance`:
#
#   e2e.test  go test -c k8s.io/kubernetes/test/e2e (the suite; its [NodeConformance] specs)
#   ginkgo    the Ginkgo CLI of the release's go.mod (runs e2e.test's specs in parallel)
#   agnhost   k8s.io/kubernetes/test/images/agnhost, static (it goes into an image of its own)
#   nnp       k8s.io/kubernetes/test/images/nonewprivs, static (the "nonewprivs" image)
#
# into the cached bin dir of the cluster binaries ($WARMLET_CACHE/k8s-<version>/bin), in a module
# dir beside the cluster binaries' one ($WARMLET_CACHE/k8s-<version>/e2e-src) with the same
# module set-up (the release's staging modules pinned to their tags). Cached: a second run builds
# nothing. `build-e2e.sh kubelet` (or WARMLET_BUILD_KUBELET=1) also builds the release's kubelet.
#
# The module proxy and the Go toolchain are the cluster binaries' ones: this script first runs
# scripts/build-cluster-bins.sh (a no-op when they are cached), which fetches a new enough Go when
# the local one is older than the release needs.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/progress.sh
source "$HERE/progress.sh"
# shellcheck source=scripts/goproxy.sh
source "$HERE/goproxy.sh"

K8S_VERSION="${WARMLET_K8S_VERSION:-v1.36.3}"
CACHE="${WARMLET_CACHE:-$HOME/.cache/warmlet}"
OUT="$CACHE/k8s-$K8S_VERSION/bin"
SRC="$CACHE/k8s-$K8S_VERSION/e2e-src"
CLUSTER_SRC="$CACHE/k8s-$K8S_VERSION/src"
LOGDIR="$CACHE/logs"
WANT_KUBELET=0
[[ "${1:-}" == kubelet || "${WARMLET_BUILD_KUBELET:-}" == 1 ]] && WANT_KUBELET=1

# A binary of ours that must run inside an image without a libc: statically linked.
is_static() {
  [[ -x "$1" ]] || return 1
  ! LC_ALL=C readelf -lW "$1" 2>/dev/null | grep -q 'program interpreter'
}
missing=()
[[ -x "$OUT/e2e.test" ]] || missing+=(e2e.test)
[[ -x "$OUT/ginkgo" ]] || missing+=(ginkgo)
is_static "$OUT/agnhost" || missing+=(agnhost)
is_static "$OUT/nnp" || missing+=(nnp)
((WANT_KUBELET)) && { [[ -x "$OUT/kubelet" ]] || missing+=(kubelet); }
if ((${#missing[@]} == 0)); then
  echo "e2e binaries for $K8S_VERSION cached in $OUT"
  exit 0
fi

# The cluster binaries first: their script resolves the module proxy, fetches the Go toolchain
# when needed and leaves the release's go.mod in $CLUSTER_SRC.
bash "$HERE/build-cluster-bins.sh"
export PATH="$PATH:/usr/local/go/bin"
MODFILE="$CLUSTER_SRC/kubernetes.mod"
NEED_GO="$(awk '$1=="go"{print $2; exit}' "$MODFILE")"
go_ok() {
  command -v go >/dev/null || return 1
  local have; have="$(go env GOVERSION 2>/dev/null)"; have="${have#go}"
  [[ "$(printf '%s\n%s\n' "$NEED_GO" "$have" | sort -V | head -1)" == "$NEED_GO" ]]
}
if ! go_ok; then
  for tc in "$CACHE"/go-toolchain/*/bin; do
    [[ -x "$tc/go" ]] && export PATH="$tc:$PATH" GOTOOLCHAIN=local
  done
fi
go_ok || { echo "no Go >= $NEED_GO available (scripts/build-cluster-bins.sh fetches one)" >&2; exit 1; }
resolve_module_proxy || exit 2
echo "Go module proxy: $PROXY (from $PROXY_FROM)"

mkdir -p "$OUT" "$SRC"
cd "$SRC"
if [[ ! -f go.mod ]]; then
  # The cluster binaries' module, renamed: same requirements, same staging pins, same go.sum.
  sed 's|^module .*|module warmlet.local/e2ebins|' "$CLUSTER_SRC/go.mod" > go.mod
  [[ -f "$CLUSTER_SRC/go.sum" ]] && cp "$CLUSTER_SRC/go.sum" go.sum
fi

k8s_build_env  # GOFLAGS, CGO_ENABLED, LDFLAGS (scripts/goproxy.sh)

build() {  # build NAME ABOUT CMD...
  local name="$1" about="$2"; shift 2
  run_logged "building $name into $OUT" "$about" "$LOGDIR/go-build-$name.log" nice "$@"
}
for b in "${missing[@]}"; do
  case "$b" in
    e2e.test)
      build e2e.test "about 20-40 min on 2 cores, less with more (this machine: $(nproc) cores); first time only" \
        go test -c -trimpath -ldflags "$LDFLAGS" -o "$OUT/e2e.test" k8s.io/kubernetes/test/e2e ;;
    ginkgo)
      build ginkgo "about 1 min" go build -trimpath -o "$OUT/ginkgo" github.com/onsi/ginkgo/v2/ginkgo ;;
    agnhost)
      build agnhost "about 3-6 min" \
        go build -trimpath -ldflags "$LDFLAGS" -o "$OUT/agnhost" k8s.io/kubernetes/test/images/agnhost ;;
    nnp)
      build nnp "under a minute" go build -trimpath -o "$OUT/nnp" k8s.io/kubernetes/test/images/nonewprivs ;;
    kubelet)
      build kubelet "about 10-15 min on 2 cores" \
        go build -trimpath -ldflags "$LDFLAGS" -o "$OUT/kubelet" k8s.io/kubernetes/cmd/kubelet ;;
  esac
done
for b in "${missing[@]}"; do
  [[ -x "$OUT/$b" ]] || { echo "build finished but $OUT/$b is missing" >&2; exit 1; }
done
echo "built: ${missing[*]}"
