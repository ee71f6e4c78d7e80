# Progress output for slow steps (sourced by lib.sh and build-cluster-bins.sh, not executed).
#
#   run_logged WHAT ABOUT LOG CMD [ARGS...]
#
# prints "==> WHAT (ABOUT); log: LOG", runs CMD with its output appended to LOG, and every
# $WARMLET_HEARTBEAT_SECONDS (default 20) prints the elapsed time and the log's last line, so a
# long step (apt, pip, go build) never looks hung. On failure it prints the log's last 40 lines
# and the log's path to stderr and returns CMD's exit code; on success "done in <time>".

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# 75 -> "1m15s", 9 -> "9s"
fmt_secs() {
  local s=$1
  if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# The last non-empty line of a log, carriage returns (progress bars) cut, at most 160 chars.
last_log_line() {
  [[ -s "$1" ]] || return 0
  tail -c 4096 "$1" | tr '\r' '\n' | awk 'NF{l=$0} END{print l}' | cut -c1-160
}

run_logged() {
  local what="$1" about="$2" log="$3"; shift 3
  local every="${WARMLET_HEARTBEAT_SECONDS:-20}"
  mkdir -p "$(dirname "$log")"
  : >"$log"
  say "$what ($about); log: $log"
  local t0=$SECONDS next=$((SECONDS + every)) rc=0 pid
  "$@" >>"$log" 2>&1 </dev/null &
  pid=$!
  # Ctrl-C / TERM: stop the step too (it is in our process group, but may ignore SIGINT).
  trap 'kill "$pid" 2>/dev/null; trap - INT TERM; kill -INT $$' INT
  trap 'kill "$pid" 2>/dev/null; trap - INT TERM; kill -TERM $$' TERM
  while kill -0 "$pid" 2>/dev/null; do
    sleep 0.5
    if ((SECONDS >= next)) && kill -0 "$pid" 2>/dev/null; then
      printf '    ... %s: %s elapsed; last log line: %s\n' "$what" "$(fmt_secs $((SECONDS - t0)))" \
        "$(last_log_line "$log")"
      next=$((SECONDS + every))
    fi
  done
  wait "$pid" || rc=$?
  trap - INT TERM
  if ((rc != 0)); then
    tail -40 "$log" >&2
    echo "FAILED (exit $rc) after $(fmt_secs $((SECONDS - t0))): $what; full log: $log" >&2
    return "$rc"
  fi
  echo "    done in $(fmt_secs $((SECONDS - t0))): $what"
}
