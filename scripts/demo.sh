#!/usr/bin/env bash
# End to end on local defaults: set up, start the edge emulator and the worker, publish sample requests,
# print their replies, then stop both (SIGTERM: the worker drains and exits 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

work=$(mktemp -d)
cleanup() {
  [ -n "${worker_pid:-}" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null || true
  [ -n "${emulator_pid:-}" ] && kill -TERM "$emulator_pid" 2>/dev/null && wait "$emulator_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

export EDGE_WORKER_WORKER__STATE_DIR="$work/state"   # the default /var/lib/edge-worker is for the service
export EDGE_WORKER_LOG__FORMAT=json

.venv/bin/edge-worker emulator --port "${EDGE_PORT:-55000}" >"$work/emulator.log" 2>&1 &
emulator_pid=$!
export EDGE_WORKER_EDGE__URL="http://127.0.0.1:${EDGE_PORT:-55000}"
.venv/bin/edge-worker run >"$work/worker.log" 2>&1 &
worker_pid=$!
for _ in $(seq 1 100); do grep -q '"broker_consuming"' "$work/worker.log" 2>/dev/null && break; sleep 0.1; done
grep -q '"broker_consuming"' "$work/worker.log" || { echo "the worker did not start:"; cat "$work/worker.log"; exit 1; }
echo "== worker consuming; publishing sample requests"
status=0
.venv/bin/python scripts/demo.py || status=$?
echo "== the worker's log lines for these jobs (JSON, one per line):"
.venv/bin/python - "$work/worker.log" <<'PY'
import json, sys
keep = ("timestamp", "level", "event", "correlation_id", "job_identifier", "status", "code", "duration_s")
for raw in open(sys.argv[1]):
    line = json.loads(raw)
    if line.get("event") in ("job_submitted", "job_finished", "request_rejected"):
        print(json.dumps({k: line[k] for k in keep if line.get(k) is not None}))
PY
kill -TERM "$worker_pid"; wait "$worker_pid" && echo "== worker drained and exited 0" || { echo "worker exit $?"; status=1; }
worker_pid=""
exit $status
