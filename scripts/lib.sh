# Shared install steps of scripts/up.sh and scripts/test.sh (sourced, not executed).
# Every step is cached: a second run costs a few seconds. Slow steps say what they do, about how
# long they take and where their log is, and print a heartbeat while they run (scripts/progress.sh).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/progress.sh
source "$REPO/scripts/progress.sh"
export WARMLET_CACHE="${WARMLET_CACHE:-$HOME/.cache/warmlet}"
LOGS="$WARMLET_CACHE/logs"
APT_PACKAGES=(containerd runc containernetworking-plugins busybox-static docker-registry skopeo iproute2
              iptables curl ca-certificates)

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# True when some Go (any version) can name the module proxy, or the user set one.
have_go_or_proxy() {
  [[ -n "${GOPROXY_URL:-}${GOPROXY:-}" ]] || PATH="$PATH:/usr/local/go/bin" command -v go >/dev/null
}

install_apt() {
  local missing=() pkgs=("${APT_PACKAGES[@]}")
  # build-cluster-bins.sh asks `go env GOPROXY` for the module proxy: Debian's Go is enough for that
  # (a newer toolchain is fetched when the release needs one).
  have_go_or_proxy || pkgs+=(golang-go)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    [[ $EUID -eq 0 ]] || sudo -v   # ask for the password now, not under a heartbeat
    run_logged "apt: updating the package lists" "about 10-60 s" "$LOGS/apt-update.log" \
      as_root env DEBIAN_FRONTEND=noninteractive apt-get update
    run_logged "apt: installing ${missing[*]}" "about 1-3 min" "$LOGS/apt-install.log" \
      as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  fi
}

install_venv() {
  local py stamp want
  py="$(command -v python3.11 || command -v python3)"
  [[ -x .venv/bin/python ]] || { say "creating .venv ($py)"; "$py" -m venv .venv; }
  stamp=.venv/.warmlet-install-stamp
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]] || ! .venv/bin/python -c 'import testbed, pytest' 2>/dev/null; then
    run_logged "pip: installing warmlet[dev] (grpcio, aiohttp, kubernetes_asyncio, pydantic, pytest, ruff, mypy, ...) into .venv" \
      "about 1-3 min the first time" "$LOGS/pip-install.log" \
      .venv/bin/python -m pip install --progress-bar off -e '.[dev]'
    echo "$want" >"$stamp"
  fi
}

build_cluster_bins() {
  # prints its own progress (what, how long, heartbeat, logs under $LOGS) or "cached"
  bash scripts/build-cluster-bins.sh
}

setup() {
  local t0=$SECONDS
  install_apt
  install_venv
  build_cluster_bins
  say "setup done in $(fmt_secs $((SECONDS - t0)))"
}
