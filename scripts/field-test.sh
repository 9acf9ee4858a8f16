#!/usr/bin/env bash
# Field test: the container image built and run by a real Docker engine, the compose file started by
# a real Compose, and the systemd unit run by a real systemd (booted in systemd-nspawn), each against
# the local broker (127.0.0.1:5672). Run as root on Debian 12 (CI does, after the suite: .ci/run).
#
# It installs what it needs from Debian (docker.io, docker-compose, mmdebstrap, systemd-container),
# keeps what it can between runs in $EDGE_WORKER_FIELD_CACHE (default /var/cache/edge-worker-field:
# the Docker data root with the base images and the build cache, the nspawn root file system, pip's
# downloads), uses queue names of its own, and stops every daemon and machine it started, also when
# a check fails. Each part prints how long it took.
#
#   sudo bash scripts/field-test.sh            # all parts
#   FIELD_PARTS="container" bash scripts/field-test.sh   # only some: container compose systemd
#
# Stand-ins for what no registry here can give: the base image python:3.11-slim-bookworm is made
# locally with mmdebstrap (Debian's python3, 3.11) as local/python:3.11-slim-bookworm; the compose
# stack's rabbitmq:3.13-management is replaced (through an override file) by a local image of
# Debian's rabbitmq-server (3.10).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CACHE=${EDGE_WORKER_FIELD_CACHE:-/var/cache/edge-worker-field}
PARTS=${FIELD_PARTS:-container compose systemd}
RUN_ID="field$$x$(date +%s)"
BASE_IMAGE=local/python:3.11-slim-bookworm
BROKER_IMAGE=local/rabbitmq:3.10-bookworm
IMAGE_TAG=field-test
IMAGE=edge-worker:$IMAGE_TAG
DOCKER=/usr/bin/docker   # Debian's client: the `docker` first on PATH may be another one, without BuildKit
PY=$ROOT/.venv/bin/python
EW=$ROOT/.venv/bin/edge-worker
RUNTIME_DIR=/run/edge-worker-field
WORK=$(mktemp -d /tmp/edge-worker-field.XXXXXX)
T_START=$(date +%s.%N)

log() { printf '[field] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

# ---- timing ----
TIMINGS=()
PART=""
PART_T0=0
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
part_begin() { PART=$1; PART_T0=$(now); log "== $PART"; }
part_end() {
  local dt
  dt=$(elapsed "$PART_T0")
  TIMINGS+=("$(printf '%-28s %7ss' "$PART" "$dt")")
  log "== $PART: ${dt}s"
  PART=""
}
FIGURES=()
figure() { FIGURES+=("$1"); log "$1"; }

# ---- clean-up: everything this run started, whatever happened ----
DOCKERD_PID=""
NSPAWN_PID=""
COMPOSE_PROJECT=""
BG_PIDS=()      # background requests (waited for)
DAEMON_PIDS=()  # host processes this run started (killed)
QUEUES=()
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$PART" ] && TIMINGS+=("$(printf '%-28s %7ss (failed)' "$PART" "$(elapsed "$PART_T0")")")
  for pid in "${BG_PIDS[@]}" "${DAEMON_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${BG_PIDS[@]}" "${DAEMON_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    log "powering off the nspawn machine"
    t_off=$(now)
    kill -TERM "$NSPAWN_PID"   # nspawn asks the container's systemd to power off
    for _ in $(seq 1 150); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$NSPAWN_PID" 2>/dev/null && { log "nspawn still running: SIGKILL"; kill -KILL "$NSPAWN_PID"; }
    wait "$NSPAWN_PID" 2>/dev/null
    TIMINGS+=("$(printf '%-28s %7ss' "nspawn poweroff" "$(elapsed "$t_off")")")
  fi
  if [ -n "${DOCKER_HOST:-}" ] && $DOCKER info >/dev/null 2>&1; then
    if [ -n "$COMPOSE_PROJECT" ]; then
      compose down --volumes --timeout 30 >/dev/null 2>&1
    fi
    ids=$($DOCKER ps -aq --filter "label=edge-worker-field=$RUN_ID")
    [ -n "$ids" ] && $DOCKER rm -f $ids >/dev/null 2>&1
    $DOCKER volume rm "$RUN_ID-state" >/dev/null 2>&1
  fi
  if [ -n "$DOCKERD_PID" ]; then
    log "stopping the dockerd this run started"
    kill -TERM "$DOCKERD_PID"
    for _ in $(seq 1 150); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$DOCKERD_PID" 2>/dev/null && kill -KILL "$DOCKERD_PID"
    wait "$DOCKERD_PID" 2>/dev/null
  fi
  if [ "${#QUEUES[@]}" -gt 0 ] && [ -x "$PY" ]; then delete_queues "${QUEUES[@]}"; fi
  rm -rf "$WORK"
  TIMINGS+=("$(printf '%-28s %7ss' "field test in all" "$(elapsed "$T_START")")")
  log "timings:"
  for line in "${TIMINGS[@]}"; do printf '[field]   %s\n' "$line" >&2; done
  for line in "${FIGURES[@]}"; do printf '[field]   %s\n' "$line" >&2; done
  if [ "$rc" -eq 0 ]; then log "field test passed"; else log "field test FAILED (exit $rc)"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers ----
# Wait until a command succeeds, for at most $2 seconds.
wait_for() {
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$(awk -v t="$timeout" -v n="$(now)" 'BEGIN { printf "%.3f", n + t }')
  until "$@" >/dev/null 2>&1; do
    if awk -v d="$deadline" -v n="$(now)" 'BEGIN { exit !(n > d) }'; then fail "timed out after ${timeout}s waiting for $what"; fi
    sleep 0.2
  done
}
# The same, but return 1 on time-out instead of failing.
wait_for_soft() {
  local timeout=$1 deadline
  shift
  deadline=$(awk -v t="$timeout" -v n="$(now)" 'BEGIN { printf "%.3f", n + t }')
  until "$@" >/dev/null 2>&1; do
    awk -v d="$deadline" -v n="$(now)" 'BEGIN { exit !(n > d) }' && return 1
    sleep 0.2
  done
}
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The queue has at least one consumer (the worker is consuming).
queue_consumed() {
  "$PY" - "$1" <<'PY'
import sys, pika
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, socket_timeout=5))
try:
    frame = conn.channel().queue_declare(queue=sys.argv[1], passive=True)
    sys.exit(0 if frame.method.consumer_count >= 1 else 1)
finally:
    conn.close()
PY
}
delete_queues() {
  "$PY" - "$@" <<'PY' || log "could not delete the queues $*"
import sys, pika
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672, socket_timeout=5))
for name in sys.argv[1:]:
    channel = conn.channel()
    try:
        channel.queue_delete(queue=name)
    except pika.exceptions.ChannelClosedByBroker:
        pass  # never declared
conn.close()
PY
}
# A Prometheus gauge from the worker's metrics endpoint equals a value.
metric_is() {
  "$PY" - "$1" "$2" "$3" <<'PY'
import sys, urllib.request
url, name, want = sys.argv[1], sys.argv[2], float(sys.argv[3])
text = urllib.request.urlopen(url, timeout=5).read().decode()
values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
sys.exit(0 if values and values[0] == want else 1)
PY
}
new_queue() { # a queue name of this run's own, remembered for deletion
  local q="edge-worker.$RUN_ID.$1"
  QUEUES+=("$q" "$q.dead" "$q.replies")
  printf '%s' "$q"
}
# One request through the broker's queue $1 from the host's venv; its reply goes to file $2.
submit() {
  EDGE_WORKER_AMQP__QUEUE=$1 "$EW" submit --model sha256 --version 1.0.0 --input job:input.txt=hello \
    --wait --timeout 120 >"$2" 2>&1
}
submit_bg() { submit "$1" "$2" & BG_PIDS+=("$!"); }
# Wait for the background submits in $@ (pids) and check each reply file in REPLY_FILES is COMPLETE.
expect_complete() {
  local file
  for file in "$@"; do
    grep -q '"status": "COMPLETE"' "$file" || { cat "$file" >&2; fail "no COMPLETE reply in $file"; }
  done
}
wait_bg() {
  local pid rc=0
  for pid in "${BG_PIDS[@]}"; do wait "$pid" || rc=1; done
  BG_PIDS=()
  return "$rc"
}
# The CA certificates the host trusts beyond Debian's (HTTPS here goes through an intercepting proxy).
extra_ca_hook() {
  local certs
  certs=$(ls /usr/local/share/ca-certificates/*.crt 2>/dev/null | tr '\n' ' ' || true)
  if [ -n "$certs" ]; then
    printf '%s\n' --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
      "--customize-hook=copy-in $certs /usr/local/share/ca-certificates" \
      --customize-hook='chroot "$1" update-ca-certificates >/dev/null'
  fi
}
ca_digest() { cat /usr/local/share/ca-certificates/*.crt 2>/dev/null | sha256sum | cut -c1-12; }

[ "$(id -u)" -eq 0 ] || fail "run as root (it starts dockerd and systemd-nspawn)"
[ -x "$PY" ] || bash scripts/setup.sh
mkdir -p "$CACHE" "$RUNTIME_DIR"

# ==== 1. tools ====
part_begin "install tools"
need=""
[ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || need="$need docker.io"
command -v docker-compose >/dev/null 2>&1 || need="$need docker-compose"
command -v mmdebstrap >/dev/null 2>&1 || need="$need mmdebstrap"
command -v systemd-nspawn >/dev/null 2>&1 || need="$need systemd-container"
if [ -n "$need" ]; then
  log "apt-get install$need"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >"$WORK/apt.log" 2>&1 \
    || { tail -20 "$WORK/apt.log" >&2; fail "apt-get install failed"; }
fi
part_end

if [[ " $PARTS " == *" container "* || " $PARTS " == *" compose "* ]]; then
# ==== 2. a Docker engine ====
part_begin "dockerd"
if DOCKER_HOST=unix:///var/run/docker.sock $DOCKER info >/dev/null 2>&1; then
  export DOCKER_HOST=unix:///var/run/docker.sock
  log "using the dockerd that answers on $DOCKER_HOST"
else
  export DOCKER_HOST=unix://$RUNTIME_DIR/docker.sock
  if $DOCKER info >/dev/null 2>&1; then
    log "using the dockerd that answers on $DOCKER_HOST (not started by this run)"
  else
    log "starting dockerd (data root $CACHE/docker)"
    dockerd --data-root "$CACHE/docker" --storage-driver overlay2 --host "$DOCKER_HOST" \
      --exec-root "$RUNTIME_DIR/exec" --pidfile "$RUNTIME_DIR/docker.pid" >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    wait_for "dockerd to answer" 60 $DOCKER info
  fi
fi
part_end
export DOCKER_BUILDKIT=1

# ==== 3. base images, made locally (no registry is reachable) ====
part_begin "base image"
want_label="ca=$(ca_digest)"
if [ "$($DOCKER image inspect -f '{{ index .Config.Labels "edge-worker-field" }}' "$BASE_IMAGE" 2>/dev/null)" != "$want_label" ]; then
  log "making $BASE_IMAGE with mmdebstrap"
  mapfile -t hooks < <(extra_ca_hook)
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    "${hooks[@]}" bookworm - \
    | $DOCKER import --change "LABEL edge-worker-field=$want_label" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        - "$BASE_IMAGE" >/dev/null
  $DOCKER image prune --force >/dev/null   # the image it replaces, if any
else
  log "$BASE_IMAGE: cached"
fi
part_end

# ==== 4. the image, from the Dockerfile as committed ====
part_begin "image build"
# The CA bundle of the base (with the proxy's CA in it) for pip, through the Dockerfile's build arg.
$DOCKER build --quiet --build-arg PYTHON_IMAGE="$BASE_IMAGE" \
  --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; fail "docker build failed"; }
# The other way in for a CA: a build secret (nothing in any layer). On a base without the proxy's CA
# (Debian's pip trusts the system bundle), the build gets through the proxy only by the secret;
# without it, pip fails with CERTIFICATE_VERIFY_FAILED.
printf 'FROM %s\nRUN rm -f /usr/local/share/ca-certificates/*.crt && update-ca-certificates --fresh >/dev/null 2>&1\n' \
  "$BASE_IMAGE" | $DOCKER build --quiet -t "$BASE_IMAGE-noca" - >/dev/null
$DOCKER build --quiet --build-arg PYTHON_IMAGE="$BASE_IMAGE-noca" \
  --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt -t "$IMAGE-secret" . >"$WORK/build-secret.log" 2>&1 \
  || { tail -20 "$WORK/build-secret.log" >&2; fail "docker build with the pip_ca secret failed"; }
$DOCKER rmi "$IMAGE-secret" >/dev/null
# The cache stays bounded: the image this build replaced, and build cache beyond 1 GB, go.
$DOCKER image prune --force >/dev/null
$DOCKER builder prune --force --keep-storage 1000000000 >/dev/null
image_mb=$($DOCKER image inspect -f '{{ .Size }}' "$IMAGE" | awk '{ printf "%.0f", $1 / 1e6 }')
base_mb=$($DOCKER image inspect -f '{{ .Size }}' "$BASE_IMAGE" | awk '{ printf "%.0f", $1 / 1e6 }')
figure "image $IMAGE: ${image_mb} MB (base stand-in ${base_mb} MB, edge-worker's layers $((image_mb - base_mb)) MB)"
# The apt layer cleans up after itself, whatever the base's apt settings (this base has none).
apt_bytes=$($DOCKER history --no-trunc --format '{{ .Size }}|{{ .CreatedBy }}' --human=false "$IMAGE" \
  | awk -F'|' '/apt-get install/ { print $1 }')
[ -n "$apt_bytes" ] && [ "$apt_bytes" -lt 5000000 ] || fail "the apt layer is $apt_bytes bytes (more than 5 MB)"
figure "apt layer: $((apt_bytes / 1000)) kB"
# The grpc extra (issue 9) is in the image.
$DOCKER run --rm --network none --entrypoint python "$IMAGE" -c 'import grpc, google.protobuf' \
  || fail "the image lacks the grpc extra (grpcio, protobuf)"
part_end
fi

# Everything the worker containers share: the host network, a read-only root, no capabilities.
HARDENED=(--network host --read-only --cap-drop ALL --security-opt no-new-privileges --label "edge-worker-field=$RUN_ID")

# ==== 5. the container: run, request, UID, health, drain ====
if [[ " $PARTS " == *" container "* ]]; then
  part_begin "container"
  queue=$(new_queue container)
  edge_port=$(free_port)
  metrics_port=$(free_port)
  $DOCKER run -d --name "$RUN_ID-edge" "${HARDENED[@]}" "$IMAGE" \
    emulator --host 127.0.0.1 --port "$edge_port" --latency 3 >/dev/null
  t_start=$(now)
  $DOCKER run -d --name "$RUN_ID-worker" "${HARDENED[@]}" --stop-timeout 90 \
    -v "$RUN_ID-state:/var/lib/edge-worker" \
    -e EDGE_WORKER_AMQP__URL="amqp://guest:guest@127.0.0.1:5672/%2F" \
    -e EDGE_WORKER_AMQP__QUEUE="$queue" -e EDGE_WORKER_AMQP__REPLY_QUEUE="$queue.replies" \
    -e EDGE_WORKER_AMQP__DEAD_LETTER_QUEUE="$queue.dead" \
    -e EDGE_WORKER_EDGE__URL="http://127.0.0.1:$edge_port" \
    -e EDGE_WORKER_METRICS__LISTEN="127.0.0.1:$metrics_port" \
    "$IMAGE" >/dev/null
  wait_for "the worker in the container to consume $queue" 60 queue_consumed "$queue"
  figure "container: consuming $(elapsed "$t_start") s after docker run"

  submit "$queue" "$WORK/reply-container-1.json" || { cat "$WORK/reply-container-1.json" >&2; fail "request failed"; }
  expect_complete "$WORK/reply-container-1.json"
  log "a request through the container: COMPLETE"

  # Every process of both containers runs as UID 10001 (ps on the host: no user namespace).
  for name in edge worker; do
    uids=$($DOCKER top "$RUN_ID-$name" -eo uid,pid,comm | awk 'NR > 1 { print $1 }' | sort -u | tr '\n' ' ')
    [ "$uids" = "10001 " ] || fail "processes of $name run as UIDs: $uids"
  done
  log "every process runs as UID 10001"
  # The journal was written to the state volume (the root file system is read-only).
  $DOCKER exec "$RUN_ID-worker" sh -c 'ls -A /var/lib/edge-worker | grep >/dev/null .' || fail "nothing in the state volume"
  $DOCKER exec "$RUN_ID-worker" sh -c 'touch /opt/probe 2>/dev/null' && fail "the root file system is writable"

  # The image's own HEALTHCHECK (interval 30 s: the first check runs 30 s after the start).
  health() { [ "$($DOCKER inspect -f '{{ .State.Health.Status }}' "$RUN_ID-worker")" = healthy ]; }
  wait_for "the container to turn healthy" 90 health
  figure "container: healthy $(elapsed "$t_start") s after docker run (HEALTHCHECK --interval=30s)"

  # docker stop with three jobs in flight (each runs 3 s on the emulator): exit 0, three replies.
  for i in 1 2 3; do submit_bg "$queue" "$WORK/reply-drain-$i.json"; done
  wait_for "three jobs in flight" 30 metric_is "http://127.0.0.1:$metrics_port/metrics" edge_worker_jobs_in_progress 3
  metric_is "http://127.0.0.1:$metrics_port/metrics" edge_worker_jobs_in_progress 3 \
    || fail "the three jobs ended before the stop (the emulator's latency is too short for this check)"
  t_stop=$(now)
  $DOCKER stop -t 90 "$RUN_ID-worker" >/dev/null
  figure "container: docker stop with 3 in flight took $(elapsed "$t_stop") s"
  code=$($DOCKER inspect -f '{{ .State.ExitCode }}' "$RUN_ID-worker")
  [ "$code" = 0 ] || { $DOCKER logs --tail 20 "$RUN_ID-worker" >&2; fail "the worker exited $code after docker stop"; }
  wait_bg || fail "a request in flight during docker stop got no reply"
  expect_complete "$WORK"/reply-drain-{1,2,3}.json
  log "docker stop: exit 0, all three replies COMPLETE"
  if $DOCKER logs "$RUN_ID-worker" 2>&1 | grep -iE 'read-only file system|permission denied|operation not permitted'; then
    fail "the worker's log has a permission error"
  fi
  $DOCKER rm -f "$RUN_ID-worker" "$RUN_ID-edge" >/dev/null
  part_end
fi

# ==== 6. compose: the committed compose.yaml, the broker image replaced by a local stand-in ====
compose() {
  RABBITMQ_UI_PORT=$ui_port EDGE_WORKER_METRICS_PORT=$compose_metrics_port EDGE_WORKER_TAG=$IMAGE_TAG \
    docker-compose --project-name "$COMPOSE_PROJECT" -f compose.yaml -f "$WORK/compose.override.yaml" "$@"
}
if [[ " $PARTS " == *" compose "* ]]; then
  part_begin "compose broker image"
  if ! $DOCKER image inspect "$BROKER_IMAGE" >/dev/null 2>&1; then
    log "making $BROKER_IMAGE with mmdebstrap (Debian's rabbitmq-server)"
    mmdebstrap --quiet --variant=minbase --include=rabbitmq-server \
      --customize-hook='printf "loopback_users = none\n" > "$1/etc/rabbitmq/rabbitmq.conf"' \
      bookworm - \
      | $DOCKER import --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
          --change 'CMD ["rabbitmq-server"]' - "$BROKER_IMAGE" >/dev/null
  else
    log "$BROKER_IMAGE: cached"
  fi
  part_end

  part_begin "compose"
  COMPOSE_PROJECT=$RUN_ID
  ui_port=$(free_port)
  compose_metrics_port=$(free_port)
  cat >"$WORK/compose.override.yaml" <<YAML
# The field test's only change to compose.yaml: no registry here, so a local broker image, whose
# PID 1 (Debian's wrapper script) needs an init to pass SIGTERM on.
services:
  rabbitmq:
    image: $BROKER_IMAGE
    init: true
YAML
  compose config >/dev/null || fail "docker-compose refuses compose.yaml"
  t_up=$(now)
  compose up --no-build -d >"$WORK/compose.log" 2>&1 || { cat "$WORK/compose.log" >&2; fail "docker-compose up failed"; }
  consuming() { compose exec -T worker edge-worker healthcheck; }
  wait_for "the compose stack's worker to answer its health check" 120 consuming
  figure "compose: stack up and healthy $(elapsed "$t_up") s after docker-compose up"
  # The header's own command, through the stack's broker, edge and worker.
  compose exec -T worker edge-worker submit --model sha256 --version 1.0.0 \
    --input job:input.txt=hello --wait >"$WORK/reply-compose.json" 2>&1 \
    || { cat "$WORK/reply-compose.json" >&2; compose logs --tail 20 >&2; fail "request through compose failed"; }
  expect_complete "$WORK/reply-compose.json"
  "$PY" -c "import sys, urllib.request; sys.exit('edge_worker_replies_published' not in urllib.request.urlopen('http://127.0.0.1:$compose_metrics_port/metrics', timeout=5).read().decode())" \
    || fail "the worker's metrics are not on the published port"
  log "a request through the compose stack: COMPLETE"
  t_down=$(now)
  compose down --volumes --timeout 90 >>"$WORK/compose.log" 2>&1 || fail "docker-compose down failed"
  COMPOSE_PROJECT=""
  figure "compose: down took $(elapsed "$t_down") s"
  part_end
fi

# ==== 7. systemd: the unit in a booted systemd (systemd-nspawn) ====
inside() {
  nsenter -t "$LEADER" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"
}
unit_prop() { inside systemctl show -P "$1" edge-worker.service; }
if [[ " $PARTS " == *" systemd "* ]]; then
  part_begin "nspawn rootfs"
  rootfs_key="bookworm-systemd-python3-v2-ca$(ca_digest)"
  ROOTFS=$CACHE/rootfs-$rootfs_key
  if [ ! -f "$ROOTFS/.complete" ]; then
    log "making the nspawn root file system with mmdebstrap"
    rm -rf "$ROOTFS" "$ROOTFS.tmp"
    mapfile -t hooks < <(extra_ca_hook)
    mmdebstrap --quiet --variant=minbase --include=systemd,systemd-sysv,dbus,python3,python3-venv,ca-certificates \
      "${hooks[@]}" --customize-hook='rm -f "$1/etc/machine-id"' \
      --customize-hook='ln -s /dev/null "$1/etc/systemd/system/systemd-firstboot.service"' \
      bookworm "$ROOTFS.tmp"
    mv "$ROOTFS.tmp" "$ROOTFS"
    touch "$ROOTFS/.complete"
  else
    log "nspawn root file system: cached"
  fi
  # The wheel the device would get, built from this checkout (outside it: the tree stays clean).
  mkdir -p "$WORK/src" "$WORK/wheel" "$CACHE/pip"
  cp -r pyproject.toml README.md worker "$WORK/src/"
  "$ROOT/.venv/bin/pip" wheel --quiet --no-deps -w "$WORK/wheel" "$WORK/src" >"$WORK/wheel.log" 2>&1 \
    || { cat "$WORK/wheel.log" >&2; fail "building the wheel failed"; }
  part_end

  part_begin "systemd boot"
  # --volatile=overlay: the cached tree stays as it is, this run's changes go to a tmpfs.
  systemd-nspawn --quiet --register=no --keep-unit --volatile=overlay --console=pipe -D "$ROOTFS" \
    --bind-ro="$WORK/wheel:/wheel" --bind="$CACHE/pip:/root/.cache/pip" \
    --bind-ro="$ROOT/systemd:/src/systemd" -b </dev/null >"$WORK/nspawn.log" 2>&1 &
  NSPAWN_PID=$!
  # The container's PID 1 is nspawn's child once it runs systemd (an intermediate child comes first).
  leader() { LEADER=$(ps -o pid=,comm= --ppid "$NSPAWN_PID" | awk '$2 == "systemd" { print $1; exit }'); [ -n "$LEADER" ]; }
  wait_for "the container's init" 30 leader
  booted() { local state; state=$(inside systemctl is-system-running --wait) || true; [ "$state" = running ]; }
  wait_for "systemd in the container to finish booting" 90 booted
  log "booted: $(inside systemctl is-system-running || true) (systemd $(inside systemctl --version | head -1 | cut -d' ' -f2))"
  part_end

  part_begin "systemd unit"
  queue=$(new_queue systemd)
  edge_port=$(free_port)
  metrics_port=$(free_port)
  "$EW" emulator --host 127.0.0.1 --port "$edge_port" --latency 5 >"$WORK/emulator-systemd.log" 2>&1 &
  DAEMON_PIDS+=("$!")
  # The install steps of docs/operations-systemd.md, inside the booted system.
  inside sh -ec "
    python3 -m venv /opt/edge-worker/venv
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
      /opt/edge-worker/venv/bin/pip install --quiet /wheel/edge_worker-*.whl
    install -d -m 0755 /etc/edge-worker
    cat > /etc/edge-worker/config.toml <<TOML
[amqp]
url = \"amqp://guest@127.0.0.1:5672/%2F\"
queue = \"$queue\"
reply_queue = \"$queue.replies\"
dead_letter_queue = \"$queue.dead\"

[edge]
url = \"http://127.0.0.1:$edge_port\"

[metrics]
listen = \"127.0.0.1:$metrics_port\"
TOML
    chmod 0644 /etc/edge-worker/config.toml
    (umask 077; printf '%s' guest > /etc/edge-worker/amqp_password)
    install -m 0644 /src/systemd/edge-worker.service /etc/systemd/system/edge-worker.service
    # A drop-in as the docs show it: a literal % is written %% (here the vhost %2F).
    install -d /etc/systemd/system/edge-worker.service.d
    printf '[Service]\nEnvironment=EDGE_WORKER_AMQP__URL=amqp://guest@127.0.0.1:5672/%%%%2F\n' \
      > /etc/systemd/system/edge-worker.service.d/10-broker.conf
    systemctl daemon-reload
  " >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log" >&2; fail "installing the unit as the docs say failed"; }
  inside systemctl show -P Environment edge-worker.service | grep >/dev/null 'EDGE_WORKER_AMQP__URL=amqp://guest@127.0.0.1:5672/%2F' \
    || fail "the drop-in's Environment= did not reach the unit: $(inside systemctl show -P Environment edge-worker.service)"
  t_start=$(now)
  # Type=notify: `systemctl start` returns once the worker sent READY=1.
  inside systemctl enable --now edge-worker.service >/dev/null 2>&1 \
    || { inside journalctl -u edge-worker -o cat --no-pager | tail -20 >&2; fail "systemctl enable --now failed"; }
  figure "systemd: active (READY=1) $(elapsed "$t_start") s after systemctl start"
  [ "$(unit_prop ActiveState)" = active ] || fail "not active: $(unit_prop ActiveState)"
  log "status: $(unit_prop StatusText)"
  queue_consumed "$queue" || fail "active, but nothing consumes $queue"

  submit "$queue" "$WORK/reply-systemd-1.json" || { cat "$WORK/reply-systemd-1.json" >&2; fail "request failed"; }
  expect_complete "$WORK/reply-systemd-1.json"
  log "a request through the systemd unit: COMPLETE"

  # Three in flight: STATUS= says so; systemctl stop drains them, exit 0, three replies.
  for i in 1 2 3; do submit_bg "$queue" "$WORK/reply-sd-drain-$i.json"; done
  wait_for "three jobs in flight" 30 metric_is "http://127.0.0.1:$metrics_port/metrics" edge_worker_jobs_in_progress 3
  status_three() { unit_prop StatusText | grep >/dev/null ': 3 in flight'; }
  status_ok=yes
  if ! wait_for_soft 3 status_three; then status_ok=no; fi
  figure "systemd: STATUS= with 3 in flight: '$(unit_prop StatusText)'"
  metric_is "http://127.0.0.1:$metrics_port/metrics" edge_worker_jobs_in_progress 3 \
    || fail "the three jobs ended before the stop (the emulator's latency is too short for this check)"
  t_stop=$(now)
  inside systemctl stop edge-worker.service || fail "systemctl stop failed"
  figure "systemd: systemctl stop with 3 in flight took $(elapsed "$t_stop") s"
  [ "$(unit_prop ExecMainStatus)" = 0 ] || fail "the worker exited $(unit_prop ExecMainStatus) on stop"
  [ "$(unit_prop Result)" = success ] || fail "stop result: $(unit_prop Result)"
  wait_bg || fail "a request in flight during systemctl stop got no reply"
  expect_complete "$WORK"/reply-sd-drain-{1,2,3}.json
  log "systemctl stop: exit 0, all three replies COMPLETE"

  # Watchdog: a stopped (hung) worker is killed and restarted. WatchdogSec is shortened to 5 s in
  # a drop-in so the test does not wait the shipped 60 s.
  inside sh -c 'printf "[Service]\nWatchdogSec=5\n" > /etc/systemd/system/edge-worker.service.d/90-field-watchdog.conf && systemctl daemon-reload'
  inside systemctl start edge-worker.service || fail "restart for the watchdog test failed"
  main_pid=$(unit_prop MainPID)
  restarts=$(unit_prop NRestarts)
  inside sh -c "kill -STOP $main_pid"
  t_hang=$(now)
  restarted() { [ "$(unit_prop NRestarts)" -gt "$restarts" ] && [ "$(unit_prop ActiveState)" = active ] && [ "$(unit_prop MainPID)" != "$main_pid" ]; }
  wait_for "the watchdog to restart the stopped worker" 60 restarted
  figure "systemd: watchdog restart $(elapsed "$t_hang") s after SIGSTOP (WatchdogSec=5 + RestartSec=5)"
  inside journalctl -u edge-worker --no-pager | grep >/dev/null 'Watchdog timeout' || fail "no watchdog timeout in the journal"
  inside sh -c 'rm /etc/systemd/system/edge-worker.service.d/90-field-watchdog.conf && systemctl daemon-reload'

  # A bad configuration: exit 78, and no restart.
  inside sh -c 'cp /etc/edge-worker/config.toml /etc/edge-worker/config.toml.good && printf "\n[worker]\nconcurrency = \"lots\"\n" >> /etc/edge-worker/config.toml'
  inside systemctl restart edge-worker.service 2>/dev/null && fail "the worker started with a bad configuration"
  [ "$(unit_prop ExecMainStatus)" = 78 ] || fail "a bad configuration exited $(unit_prop ExecMainStatus), not 78"
  restarts=$(unit_prop NRestarts)   # (an operator's restart resets the counter)
  sleep 7   # RestartSec=5: a restart would have happened by now (a check that nothing happens)
  [ "$(unit_prop NRestarts)" = "$restarts" ] || { inside journalctl -u edge-worker --no-pager -n 30 >&2; fail "restarted after exit 78 (NRestarts $restarts -> $(unit_prop NRestarts))"; }
  [ "$(unit_prop ActiveState)" = failed ] || fail "after exit 78: $(unit_prop ActiveState)"
  log "bad configuration: exit 78, failed, not restarted"
  inside sh -c 'mv /etc/edge-worker/config.toml.good /etc/edge-worker/config.toml'

  # The exposure score as the booted systemd computes it.
  exposure=$(inside systemd-analyze security edge-worker.service 2>&1 | sed -n 's/.*Overall exposure level for edge-worker.service: \([0-9.]*\).*/\1/p')
  [ -n "$exposure" ] || fail "no exposure score from systemd-analyze security"
  awk -v e="$exposure" 'BEGIN { exit !(e <= 1.5) }' || fail "exposure $exposure > 1.5"
  figure "systemd: systemd-analyze security inside: $exposure"

  # Nothing the sandbox refused.
  inside journalctl -u edge-worker -o cat --no-pager >"$WORK/journal.txt"
  if grep -iE 'EPERM|operation not permitted|seccomp|read-only file system|permission denied' "$WORK/journal.txt"; then
    fail "the sandbox refused something (see above)"
  fi
  log "journal: no EPERM, seccomp or read-only file system error ($(wc -l <"$WORK/journal.txt") lines)"
  [ "$status_ok" = yes ] || fail "STATUS= did not show the 3 requests in flight (the daemon sends STATUS= only on state changes?)"
  part_end
fi
