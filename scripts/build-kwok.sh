#!/usr/bin/env bash
# Build KWOK's controller (sigs.k8s.io/kwok/cmd/kwok) of a pinned release from the Go module proxy,
# and take its default fast Stages from the same module's source, for `warmlet bench scale`
# (bench/kwok.py runs it as the third contender next to warmlet and the bare status loop).
#
# Into $WARMLET_CACHE/kwok-<version>/ (default ~/.cache/warmlet/kwok-v0.8.0/):
#   bin/kwok        built with exactly the requirements of the release's own go.mod
#                   (`go install module/cmd/kwok@version`), static, -trimpath; the release's
#                   source already names its version (pkg/consts: Version, PreRelease "GA").
#   stages/*.yaml   the Stage objects of the release's kustomize/stage/fast kustomization (node
#                   fast = node-initialize, node heartbeat with lease, pod fast = pod-ready,
#                   pod-complete, pod-delete), copied unchanged; the kustomizations are followed
#                   from the module source, so the set is the release's, not a list written here.
#   stages/SOURCE   where each file came from (module, version, path, sha256).
# Cached: a second run builds and copies nothing. The module proxy is the first URL of
# `go env GOPROXY` (scripts/goproxy.sh); the Go toolchain is the local one (KWOK v0.8.0 needs
# Go >= 1.26), or one scripts/build-cluster-bins.sh fetched into the cache.
set -euo pipefail
HERE="$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/progress.sh
source "$HERE/progress.sh"
# shellcheck source=scripts/goproxy.sh
source "$HERE/goproxy.sh"

KWOK_VERSION="${WARMLET_KWOK_VERSION:-v0.8.0}"
MODULE=sigs.k8s.io/kwok
CACHE="${WARMLET_CACHE:-$HOME/.cache/warmlet}"
OUT="$CACHE/kwok-$KWOK_VERSION"
BIN="$OUT/bin/kwok"
STAGES="$OUT/stages"
LOGDIR="$CACHE/logs"
# the entry kustomization of KWOK's default fast stages, inside the module
FAST=kustomize/stage/fast

cached() {
  [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "${KWOK_VERSION} " \
    && [[ -s "$STAGES/SOURCE" ]] && compgen -G "$STAGES/*.yaml" >/dev/null
}
if cached; then
  echo "kwok $KWOK_VERSION cached in $OUT (bin/kwok, stages/: $(cd "$STAGES" && echo *.yaml))"
  exit 0
fi

use_go_and_module_proxy || exit $?

# 1. the module's source (into the Go module cache; read-only there)
echo "==> go mod download $MODULE@$KWOK_VERSION"
SRC="$(cd "$(mktemp -d)" && go mod download -json "$MODULE@$KWOK_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
[[ -n "$SRC" && -f "$SRC/$FAST/kustomization.yaml" ]] || {
  echo "the module source of $MODULE@$KWOK_VERSION has no $FAST/kustomization.yaml (dir: '${SRC}')" >&2
  exit 1
}
echo "    source: $SRC"

# 2. the default fast Stages: the files the kustomizations under $FAST name, followed recursively
# (a `resources:` entry is a directory with its own kustomization.yaml, or a YAML file)
stage_files() {  # DIR (relative to $SRC) -> the YAML files it resolves to, relative to $SRC
  local dir="$1" entry
  while read -r entry; do
    if [[ -f "$SRC/$dir/$entry/kustomization.yaml" ]]; then
      stage_files "$(realpath -m --relative-to="$SRC" "$SRC/$dir/$entry")"
    elif [[ -f "$SRC/$dir/$entry" ]]; then
      realpath -m --relative-to="$SRC" "$SRC/$dir/$entry"
    else
      echo "kustomization $dir names '$entry', which is neither a file nor a kustomization" >&2
      return 1
    fi
  done < <(awk '/^resources:/{r=1; next} /^[^ -]/{r=0} r && /^- /{print $2}' "$SRC/$dir/kustomization.yaml")
}
FILES=()
while read -r f; do FILES+=("$f"); done < <(stage_files "$FAST")
((${#FILES[@]})) || { echo "no stage files found under $SRC/$FAST" >&2; exit 1; }
rm -rf "$STAGES.tmp" && mkdir -p "$STAGES.tmp"
{
  echo "# KWOK's default fast stages, copied unchanged from the module source by scripts/build-kwok.sh"
  echo "# module: $MODULE@$KWOK_VERSION  kustomization: $FAST"
  i=0
  for f in "${FILES[@]}"; do
    i=$((i + 1))
    name="$(printf '%02d' "$i")-$(basename "$f")"  # the kustomization's order, kept
    cp "$SRC/$f" "$STAGES.tmp/$name"
    chmod u+w "$STAGES.tmp/$name"  # the module cache is read-only
    echo "$name  $f  sha256:$(sha256sum "$SRC/$f" | cut -d' ' -f1)"
  done
} >"$STAGES.tmp/SOURCE"
rm -rf "$STAGES" && mv "$STAGES.tmp" "$STAGES"
echo "    stages: ${FILES[*]} -> $STAGES"

# 3. the controller binary
mkdir -p "$OUT/bin"
run_logged "building kwok $KWOK_VERSION ($MODULE/cmd/kwok) into $OUT/bin" \
  "about 3-8 min on 2 cores (this machine: $(nproc) cores), at the lowest CPU priority; first time only" \
  "$LOGDIR/go-build-kwok.log" \
  env GOBIN="$OUT/bin" nice -n 19 go install -trimpath -ldflags "-s -w" "$MODULE/cmd/kwok@$KWOK_VERSION"
[[ -x "$BIN" ]] || { echo "build finished but $BIN is missing" >&2; exit 1; }
echo "built: $BIN ($("$BIN" --version 2>&1 | head -1))"
