#!/usr/bin/env bash
# Capture the raw HTTP requests each client peer sends, in each revision it supports.
#   tests/peers/capture_all.sh [OUTDIR] [SCENARIO_ARGS...]
# Default scenario: `--scenario call --tool echo --args '{"text":"hi"}'`.
# Runs tests/setup.sh first. Upstream is ts_server_v2 (serves 2025-11-25 sessionful + 2026-07-28)
# unless CAPTURE_UPSTREAM=py (py_server.py) or CAPTURE_UPSTREAM=v1 (ts_server_v1.mjs).
# Writes OUTDIR/<client>-<revision>/{conn-*.c2s,conn-*.s2c,conn-*.idx,requests.txt,client.json}.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
eval "$("$here/../setup.sh" --print-env)"
py="$PORTCULLIS_TEST_PYTHON"
out="${1:-$(mktemp -d /tmp/portcullis-capture.XXXXXX)}"
shift || true
if [[ $# -eq 0 ]]; then set -- --scenario call --tool echo --args '{"text":"hi"}'; fi
mkdir -p "$out"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
up_port=""
trap cleanup EXIT

# start_bg <var> <readyfile> cmd... : start cmd in the background (in THIS shell, so the EXIT
# trap can kill it), wait for its "READY <port>" line and store the port in <var>.
start_bg() {
  local var="$1" ready="$2"
  shift 2
  "$@" >"$ready" 2>>"$out/servers.log" &
  pids+=($!)
  local _
  for _ in $(seq 1 200); do
    if grep -q '^READY ' "$ready" 2>/dev/null; then
      printf -v "$var" '%s' "$(awk '/^READY /{print $2; exit}' "$ready")"
      return
    fi
    sleep 0.05
  done
  echo "capture_all.sh: $* did not become ready" >&2
  exit 1
}

case "${CAPTURE_UPSTREAM:-v2}" in
  py) start_bg up_port "$out/upstream.ready" "$py" "$here/py_server.py" --port 0 --name upstream ;;
  v1) start_bg up_port "$out/upstream.ready" node "$here/node/ts_server_v1.mjs" --port 0 --name upstream ;;
  *) start_bg up_port "$out/upstream.ready" node "$here/node/ts_server_v2.mjs" --port 0 --name upstream ;;
esac

run_one() { # run_one <label> <revision> cmd...
  local label="$1" rev="$2"
  shift 2
  local dir="$out/$label-$rev"
  mkdir -p "$dir"
  local pport proxy_pid
  start_bg pport "$dir/proxy.ready" "$py" "$here/capture_proxy.py" --listen-port 0 --upstream-port "$up_port" --out "$dir"
  proxy_pid="${pids[-1]}"
  local rc=0
  "$@" "http://127.0.0.1:$pport/mcp" --revision "$rev" "${scenario[@]}" >"$dir/client.json" 2>"$dir/client.err" || rc=$?
  sleep 0.2
  kill "$proxy_pid" 2>/dev/null || true
  "$py" "$here/capture_proxy.py" --dump "$dir" --responses >"$dir/requests.txt"
  echo "capture_all.sh: $label $rev rc=$rc -> $dir/requests.txt" >&2
}

scenario=("$@")
run_one py_client 2025-11-25 "$py" "$here/py_client.py"
run_one py_client 2026-07-28 "$py" "$here/py_client.py"
run_one ts_client_v1 2025-11-25 node "$here/node/ts_client_v1.mjs"
run_one ts_client_v2 2025-11-25 node "$here/node/ts_client_v2.mjs"
run_one ts_client_v2 2026-07-28 node "$here/node/ts_client_v2.mjs"
run_one py_client_pin 2026-07-28 "$py" "$here/py_client.py" --connect pin
run_one ts_client_v2_auto 2026-07-28 node "$here/node/ts_client_v2.mjs" --connect auto
echo "$out"
