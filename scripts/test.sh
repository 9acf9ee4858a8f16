#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, lint, types, then every test against the real broker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/node-deps.sh   # Node.js and the locked npm packages the AsyncAPI and Node.js producer tests use

# Tools some tests drive for real: stunnel (a TLS front for the broker) and systemd-analyze (the unit).
missing=""
command -v stunnel >/dev/null 2>&1 || command -v stunnel4 >/dev/null 2>&1 || missing="$missing stunnel4"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
if [ -n "$missing" ]; then
  echo "[test] installing:$missing" >&2
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO=sudo; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

echo "[test] ruff"
.venv/bin/ruff check worker tests bench scripts
.venv/bin/ruff format --check worker tests bench scripts
echo "[test] mypy"
.venv/bin/mypy
echo "[test] pytest"
exec .venv/bin/pytest "$@"
