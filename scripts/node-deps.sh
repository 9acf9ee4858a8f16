#!/usr/bin/env bash
# Node.js for the tests that use it (tests/test_asyncapi.py, tests/test_node_producer.py): installs Debian's
# nodejs and npm when node is missing, then the locked npm packages of tests/node/ and examples/node/.
# The tests install those packages themselves when missing; this script does it ahead of time (CI, a fresh
# machine, no network during the test run). Safe to run again: a folder whose node_modules matches its
# package-lock.json is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[node-deps] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "apt-get install nodejs npm"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 18 ]; then
  log "node $(node --version) is too old: Node.js 18 or newer is needed"; exit 1
fi

for folder in tests/node examples/node; do
  want=$(sha256sum < "$folder/package-lock.json" | cut -d' ' -f1)
  stamp="$folder/node_modules/.edge-worker-lock-sha256"   # the same stamp tests/nodekit.py writes
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    continue
  fi
  log "npm ci in $folder"
  (cd "$folder" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
done
