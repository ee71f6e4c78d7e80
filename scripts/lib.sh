# Shared install steps of scripts/up.sh and scripts/test.sh (sourced, not executed).
# Every step is cached and quiet: a second run costs a few seconds.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export WARMLET_CACHE="${WARMLET_CACHE:-$HOME/.cache/warmlet}"
APT_PACKAGES=(containerd runc containernetworking-plugins busybox-static docker-registry skopeo iproute2
              iptables curl ca-certificates)

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

as_root() { if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "apt: installing ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_venv() {
  local py stamp want
  py="$(command -v python3.11 || command -v python3)"
  [[ -x .venv/bin/python ]] || { say "creating .venv ($py)"; "$py" -m venv .venv; }
  stamp=.venv/.warmlet-install-stamp
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]] || ! .venv/bin/python -c 'import testbed, pytest' 2>/dev/null; then
    say "pip: installing warmlet[dev] into .venv"
    local log="$WARMLET_CACHE/pip-install.log"
    mkdir -p "$WARMLET_CACHE"
    if ! .venv/bin/python -m pip install -e '.[dev]' >"$log" 2>&1; then
      tail -30 "$log" >&2
      echo "pip install failed; full log: $log" >&2
      return 1
    fi
    echo "$want" >"$stamp"
  fi
}

build_cluster_bins() {
  local log="$WARMLET_CACHE/build-cluster-bins.log"
  mkdir -p "$WARMLET_CACHE"
  if ! bash scripts/build-cluster-bins.sh >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "building the Kubernetes binaries failed; full log: $log" >&2
    return 1
  fi
  tail -1 "$log"
}

setup() {
  local t0=$SECONDS
  install_apt
  install_venv
  build_cluster_bins
  say "setup done in $((SECONDS - t0))s"
}
