#!/usr/bin/env bash
# Build kube-apiserver, kube-scheduler, kube-controller-manager, kubectl and a
# matching etcd of one pinned Kubernetes release from the Go module proxy.
# Cached under $WARMLET_CACHE/k8s-<version>/bin: a second run builds nothing.
#
# The module proxy is the first URL in `go env GOPROXY` (or in $GOPROXY when no Go is installed
# yet); $GOPROXY_URL overrides both. Every slow step prints what it does, about how long it takes,
# a heartbeat with the elapsed time and the log's last line, and where its log is.
#
# Opt-in, not part of what the test bed needs: `build-cluster-bins.sh kubelet` (or
# WARMLET_BUILD_KUBELET=1) builds only the release's kubelet into the same directory,
# for bench/kubelet_baseline.py.
set -euo pipefail
# shellcheck source=scripts/progress.sh
source "$(dirname "${BASH_SOURCE[0]}")/progress.sh"
# shellcheck source=scripts/goproxy.sh
source "$(dirname "${BASH_SOURCE[0]}")/goproxy.sh"

MODE="${1:-cluster}"
[[ "${WARMLET_BUILD_KUBELET:-}" == 1 ]] && MODE=kubelet

K8S_VERSION="${WARMLET_K8S_VERSION:-v1.36.3}"
CACHE="${WARMLET_CACHE:-$HOME/.cache/warmlet}"
OUT="$CACHE/k8s-$K8S_VERSION/bin"
SRC="$CACHE/k8s-$K8S_VERSION/src"
BINS=(kube-apiserver kube-scheduler kube-controller-manager kubectl etcd)

have_all() {
  for b in "${BINS[@]}"; do [[ -x "$OUT/$b" ]] || return 1; done
}
if [[ "$MODE" == kubelet ]]; then
  BINS=(kubelet)
  PKGS=(k8s.io/kubernetes/cmd/kubelet)
else
  PKGS=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler
        k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl ./etcd)
fi
if have_all; then
  echo "$MODE binaries for $K8S_VERSION cached in $OUT"
  exit 0
fi

export PATH="$PATH:/usr/local/go/bin"
resolve_module_proxy || exit 2
echo "Go module proxy: $PROXY (from $PROXY_FROM)"
LOGDIR="$CACHE/logs"

mkdir -p "$OUT" "$SRC/etcd"
cd "$SRC"

STAGING_VERSION="v0.${K8S_VERSION#v1.}"
MODFILE="$SRC/kubernetes.mod"
curl -fsS "$PROXY/k8s.io/kubernetes/@v/$K8S_VERSION.mod" -o "$MODFILE"

# A Go new enough for the release (its go.mod's `go` line). Debian 12 ships 1.19, so when the
# local go is missing or older, fetch the official toolchain module (golang.org/toolchain) from
# the module proxy -- what `GOTOOLCHAIN=auto` does -- and cache it next to the binaries.
NEED_GO="$(awk '$1=="go"{print $2; exit}' "$MODFILE")"
GO_TOOLCHAIN="${WARMLET_GO_TOOLCHAIN:-go1.26.8}"
go_ok() {
  command -v go >/dev/null || return 1
  local have; have="$(go env GOVERSION 2>/dev/null)"; have="${have#go}"
  [[ "$(printf '%s\n%s\n' "$NEED_GO" "$have" | sort -V | head -1)" == "$NEED_GO" ]]
}
if ! go_ok; then
  TC="$CACHE/go-toolchain/$GO_TOOLCHAIN"
  if [[ ! -x "$TC/bin/go" ]]; then
    mkdir -p "$CACHE/go-toolchain"
    ZIP="$CACHE/go-toolchain/$GO_TOOLCHAIN.zip"
    run_logged "fetching the Go toolchain $GO_TOOLCHAIN (~70 MB, need >= $NEED_GO) from the Go module proxy" \
      "about 1 min" "$LOGDIR/go-toolchain.log" \
      curl -fS --progress-bar "$PROXY/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.linux-amd64.zip" -o "$ZIP"
    python3 - "$ZIP" "$TC" <<'PY'
import os, sys, zipfile
zpath, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(zpath) as z:
    for info in z.infolist():
        # entries are "golang.org/toolchain@v0.0.1-goX.Y.Z.linux-amd64/<path>"
        name = info.filename.split("/", 2)[2] if info.filename.count("/") >= 2 else ""
        if not name or info.is_dir():
            continue
        path = os.path.join(dest, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with z.open(info) as src, open(path, "wb") as out:
            out.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(path, mode or 0o644)
PY
    rm -f "$ZIP"
  fi
  export PATH="$TC/bin:$PATH" GOTOOLCHAIN=local
fi
go_ok || { echo "no Go >= $NEED_GO available" >&2; exit 1; }
ETCD_VERSION="$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$MODFILE")"

{
  echo "module warmlet.local/clusterbins"
  echo
  echo "go $(awk '$1=="go"{print $2; exit}' "$MODFILE")"
  echo
  echo "require ("
  echo "	k8s.io/kubernetes $K8S_VERSION"
  echo "	go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  echo ")"
  echo
  echo "replace ("
  grep -E '=> ./staging/src/' "$MODFILE" | awk -v v="$STAGING_VERSION" '{print "\t" $1 " => " $1 " " v}'
  echo ")"
} > go.mod

cat > etcd/main.go <<'GO'
// Command etcd is the etcd server of the pinned Kubernetes release's line.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO

k8s_build_env  # GOFLAGS, CGO_ENABLED, LDFLAGS (scripts/goproxy.sh)

NAMES="$(printf '%s, ' "${BINS[@]}")"; NAMES="${NAMES%, }"
run_logged "downloading the sources of Kubernetes $K8S_VERSION and etcd $ETCD_VERSION from the Go module proxy" \
  "about 1-5 min, first time only" "$LOGDIR/go-mod-download.log" \
  go mod download -x k8s.io/kubernetes go.etcd.io/etcd/server/v3
run_logged "building $NAMES into $OUT" \
  "about 10-15 min on 2 cores, less with more (this machine: $(nproc) cores); first time only" \
  "$LOGDIR/go-build.log" \
  go build -v -trimpath -ldflags "$LDFLAGS" -o "$OUT/" "${PKGS[@]}"
have_all || { echo "build finished but binaries are missing in $OUT" >&2; exit 1; }
echo "built: $(ls "$OUT" | tr '\n' ' ')"
