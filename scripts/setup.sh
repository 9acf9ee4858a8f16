#!/usr/bin/env bash
# Set up everything edge-worker needs on this machine: a virtual environment with the project and its
# development tools, and a running RabbitMQ on 127.0.0.1:5672 (installed from Debian's packages if missing).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# 1. Python >= 3.11 and the virtual environment.
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  log "Python 3.11+ is required ($PYTHON is $("$PYTHON" --version 2>&1))"; exit 1
fi
if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/pip ]; then
  rm -rf .venv  # absent, or left half-made by an interrupted first run
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
fi
stamp=.venv/.installed-${EXTRAS:-dev}-$(sha256sum < pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing the project and its dev tools into .venv (pip's output: .venv/pip.log)"
  .venv/bin/python -m pip install -q --upgrade pip >.venv/pip.log 2>&1 || true
  .venv/bin/python -m pip install -q -e ".[${EXTRAS:-dev}]" >>.venv/pip.log 2>&1 \
    || { tail -20 .venv/pip.log; log "pip install failed"; exit 1; }
  .venv/bin/python -c 'import worker, pika, msgpack, requests, structlog, prometheus_client, pytest' \
    || { log "the install did not complete"; exit 1; }
  rm -f .venv/.installed-*; touch "$stamp"
fi

# 2. RabbitMQ: installed, started, answering.
broker_answers() { .venv/bin/python - <<'PY' 2>/dev/null
import socket, sys
try:
    socket.create_connection(("127.0.0.1", 5672), timeout=2).close()
except OSError:
    sys.exit(1)
PY
}
if ! broker_answers; then
  if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
    apt_install rabbitmq-server
  fi
  export PATH="$PATH:/usr/sbin"
  if ! broker_answers; then
    log "starting RabbitMQ"
    as_root rabbitmq-server -detached || true
    as_root timeout 120 rabbitmqctl await_startup >/dev/null
  fi
  for _ in $(seq 1 60); do broker_answers && break; sleep 1; done
  broker_answers || { log "RabbitMQ does not answer on 127.0.0.1:5672"; exit 1; }
fi
log "RabbitMQ answers on 127.0.0.1:5672"
