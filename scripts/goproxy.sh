# Which Go module proxy to fetch from, and how the release is built (sourced by build-cluster-bins.sh
# and build-e2e.sh, not executed).
# No proxy host is written here: it comes from the user's or the Go toolchain's own settings.

# The first entry of a GOPROXY list that is a URL. Entries are separated by "," or "|";
# "direct" and "off" are not URLs. Prints it without a trailing slash, or fails printing nothing.
first_proxy_url() {
  local entries e
  IFS=',|' read -r -a entries <<<"$1"
  for e in "${entries[@]}"; do
    e="${e//[[:space:]]/}"
    case "$e" in
      http://* | https://* | file://*) printf '%s\n' "${e%/}"; return 0 ;;
    esac
  done
  return 1
}

# Sets PROXY (a URL) and PROXY_FROM (where it came from): $GOPROXY_URL if set, else the first URL
# of `go env GOPROXY` (which honours $GOPROXY and `go env -w`, else is Go's built-in default), else
# of $GOPROXY when no Go is installed yet. Fails with a message saying how to set it.
resolve_module_proxy() {
  local list
  if [[ -n "${GOPROXY_URL:-}" ]]; then
    list="$GOPROXY_URL" PROXY_FROM='$GOPROXY_URL'
  elif command -v go >/dev/null; then
    list="$(go env GOPROXY)" PROXY_FROM='go env GOPROXY'
  else
    list="${GOPROXY:-}" PROXY_FROM='$GOPROXY (no Go installed)'
  fi
  if ! PROXY="$(first_proxy_url "$list")"; then
    cat >&2 <<MSG
no Go module proxy URL to fetch from: $PROXY_FROM is '$list' (no http(s) entry; "direct" and "off" are not usable here).
  Either install any Go (Debian: apt-get install golang-go) so that \`go env GOPROXY\` names the
  proxy, or set GOPROXY to your module proxy's URL (the one a stock Go install prints for
  \`go env GOPROXY\`, or your organisation's mirror), e.g.  GOPROXY=<url> ./scripts/up.sh
MSG
    return 2
  fi
}

# How the pinned release's Go programs are built (both build scripts): module mode, static, and
# the release's version stamped as the Kubernetes build does. Needs K8S_VERSION; sets LDFLAGS.
k8s_build_env() {
  local minor="${K8S_VERSION#v1.}" pkg
  minor="${minor%%.*}"
  export GOFLAGS="-mod=mod -buildvcs=false"
  export CGO_ENABLED=0
  LDFLAGS="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
}

# A Go toolchain on PATH (the system's, else the one build-cluster-bins.sh fetched into
# $CACHE/go-toolchain) and GOPROXY from resolve_module_proxy, for the scripts that build a Go tool
# of the tests from the module proxy. Returns 1 without Go, 2 without a proxy.
use_go_and_module_proxy() {
  export PATH="$PATH:/usr/local/go/bin"
  if ! command -v go >/dev/null; then
    for tc in "${CACHE:-$HOME/.cache/warmlet}"/go-toolchain/*/bin; do
      if [[ -x "$tc/go" ]]; then export PATH="$tc:$PATH"; fi
    done
  fi
  command -v go >/dev/null || {
    echo "no Go found: run scripts/build-cluster-bins.sh first (it fetches one), or install Go" >&2
    return 1
  }
  resolve_module_proxy || return 2
  echo "Go module proxy: $PROXY (from $PROXY_FROM); Go: $(go env GOVERSION)"
  export GOPROXY="$PROXY" GOFLAGS="-buildvcs=false" CGO_ENABLED=0
}
