# edge-worker container image.
#
# The build needs BuildKit (the RUN --mount lines): Docker 23 and newer use it by default; with
# Docker 20.10 (Debian 12's docker.io) set DOCKER_BUILDKIT=1, or use `docker buildx build`.
# No `# syntax=` line on purpose: the frontend built into BuildKit handles this whole file, and a
# syntax line would make every build fetch a frontend image from Docker Hub first.
#
#   DOCKER_BUILDKIT=1 docker build -t edge-worker:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/edge-worker:0.1.0 --push .
#
# Behind a proxy or with a package mirror, pip in the builder is told where to go and what CA to
# trust; neither ends up in the image:
#   --build-arg PIP_INDEX_URL=https://mirror.example/simple     (pip's index)
#   --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt   (a CA bundle pip trusts)
#   --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt     (or a bundle already in the base)
# Another base (a local mirror of python:3.11-slim-bookworm): --build-arg PYTHON_IMAGE=...
#
# Multi-arch: nothing here downloads a binary for one architecture. Each platform's builder stage
# runs on that platform (under QEMU with buildx when it is not the host's), so pip picks the
# wheels (msgpack) built for it; Debian's tini comes from the platform's own archive.
#
# Running it: give `docker stop` more time than the drain (worker.drain_timeout, 60 s):
#   docker run --stop-timeout 90 -v edge-worker-state:/var/lib/edge-worker \
#     -e EDGE_WORKER_AMQP__URL=amqp://user@broker:5672/%2F -e EDGE_WORKER_EDGE__URL=http://edge:55000 \
#     edge-worker:dev
# Configuration: EDGE_WORKER_<SECTION>__<KEY> variables, or a file mounted at
# /etc/edge-worker/config.toml (read when it exists). Secrets: mount a file and point
# EDGE_WORKER_AMQP__PASSWORD_FILE at it (e.g. a Docker/Compose secret in /run/secrets/).

# One base for both stages: the venv's python is a symlink into the base image, so the two must
# match exactly. Pinned to a Python minor and a Debian release; bump both on purpose.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: a virtual environment with edge-worker and its dependencies, nothing else ----
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

# Where pip gets packages from and which CA it trusts (see the header). Build arguments are seen by
# this stage's RUN lines only; the runtime stage copies the venv, not them.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_CERT=

# The same path as on a device (docs/operations-systemd.md), because a venv cannot be moved.
RUN python -m venv /opt/edge-worker/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker/ ./worker/

# A regular (not editable) install builds the wheel and compiles the .pyc files here, so the
# running container never writes bytecode. pip and setuptools are only needed to build: removed.
# With the grpc extra (issue 9): what the edge client needs for the edge server's gRPC API.
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=pip_ca \
    if [ -f /run/secrets/pip_ca ]; then PIP_CERT=/run/secrets/pip_ca; fi \
    && if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
    && /opt/edge-worker/venv/bin/pip install "/src[grpc]" \
    && /opt/edge-worker/venv/bin/pip uninstall --yes pip setuptools \
    && /opt/edge-worker/venv/bin/edge-worker --help > /dev/null

# ---- runtime ----
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="edge-worker" \
      org.opencontainers.image.description="RabbitMQ consumer that runs msgpack job requests on a local edge inference server" \
      org.opencontainers.image.licenses="Apache-2.0"

# tini as PID 1: it forwards SIGTERM to the worker (which then drains) and reaps zombies.
# Not version-pinned: Debian's stable archive only takes security fixes, and the exact version
# string differs between architectures (binNMUs), which would break the multi-arch build.
# The layer is cleaned explicitly (package lists, downloaded .debs, apt's caches, its logs) so
# its size does not depend on whether the base image's apt is configured to clean up after itself.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends tini \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/log/apt \
       /var/log/dpkg.log

# A fixed, numeric, unprivileged identity: volumes can be prepared for it (chown 10001:10001) and
# orchestrators can check it is not root without reading /etc/passwd.
# (--no-log-init: a high UID would otherwise grow a sparse /var/log/lastlog into the layer.)
RUN groupadd --gid 10001 edge-worker \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin edge-worker \
    && install --directory --owner=10001 --group=10001 --mode=0700 /var/lib/edge-worker \
    && install --directory --mode=0755 /etc/edge-worker

COPY --from=builder /opt/edge-worker/venv /opt/edge-worker/venv

ENV PATH=/opt/edge-worker/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# The journal of started edge jobs (worker.state_dir, default /var/lib/edge-worker): it must
# outlive the container, or a redelivered request could start a second edge job.
VOLUME /var/lib/edge-worker

USER 10001:10001
WORKDIR /var/lib/edge-worker

# The worker drains on the first SIGTERM; the stop timeout (docker run --stop-timeout,
# compose stop_grace_period) must be longer than worker.drain_timeout.
STOPSIGNAL SIGTERM

# Broker and edge both answer: exit 0, else 1 with one line saying which. Each check opens a short
# connection to the broker, so not more often than every 30 s. Note that an edge or broker outage
# marks the container unhealthy while the worker itself waits it out and resumes by itself.
HEALTHCHECK --interval=30s --timeout=15s --start-period=60s --retries=3 \
    CMD ["edge-worker", "healthcheck"]

ENTRYPOINT ["tini", "--", "edge-worker"]
CMD ["run"]
