"""Prometheus metrics (base units, no per-job labels) and the /metrics + /healthz endpoint."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from worker import __version__

_JOB_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    """Every series the worker exports, in a registry of its own (no global state, so tests can make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("edge_worker_requests_received", "Deliveries taken from the request queue", registry=r)
        self.finished = Counter(
            "edge_worker_jobs_finished", "Requests finished, by final status", ["status"], registry=r
        )
        self.in_progress = Gauge("edge_worker_jobs_in_progress", "Requests being processed now", registry=r)
        self.job_duration = Histogram(
            "edge_worker_job_duration_seconds", "Time from delivery to outcome", buckets=_JOB_BUCKETS, registry=r
        )
        self.edge_call_duration = Histogram(
            "edge_worker_edge_call_duration_seconds",
            "Edge HTTP call latency, by call",
            ["call"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.edge_errors = Counter(
            "edge_worker_edge_errors", "Failed edge HTTP calls, by call and kind", ["call", "kind"], registry=r
        )
        self.edge_up = Gauge("edge_worker_edge_up", "1 while the edge answers", registry=r)
        self.broker_connected = Gauge("edge_worker_broker_connected", "1 while consuming from the broker", registry=r)
        self.consuming = Gauge(
            "edge_worker_consuming", "1 while taking requests (consumer on, publishes confirmed)", registry=r
        )
        self.reconnects = Counter("edge_worker_broker_reconnects", "Broker connections re-established", registry=r)
        self.replies = Counter("edge_worker_replies_published", "Replies confirmed by the broker", registry=r)
        self.dead_letters = Counter(
            "edge_worker_dead_letters", "Requests placed on the dead-letter queue, by error code", ["code"], registry=r
        )
        self.last_finished = Gauge(
            "edge_worker_last_job_finished_timestamp_seconds", "Unix time of the last finished request", registry=r
        )
        self.build = Info("edge_worker_build", "Build information", registry=r)
        self.build.info({"version": __version__})
        self.edge_up.set(1)
        self.last_tick = time.monotonic()
        self._is_broker_connected = False
        self._why_not_consuming: Callable[[], str | None] = lambda: "starting"
        self._is_edge_up = True
        self._jobs_in_progress = 0
        self._lock = threading.Lock()

    def set_broker_connected(self, connected: bool) -> None:
        self._is_broker_connected = connected
        self.broker_connected.set(1 if connected else 0)

    def watch_consuming(self, why_not: Callable[[], str | None]) -> None:
        """`why_not()` is None while consuming, else why no requests are taken; asked at each scrape and
        /healthz (from the HTTP thread: it must only read state)."""
        self._why_not_consuming = why_not
        self.consuming.set_function(lambda: 0.0 if why_not() else 1.0)

    def set_edge_up(self, up: bool) -> None:
        self._is_edge_up = up
        self.edge_up.set(1 if up else 0)

    def job_started(self) -> None:
        self.received.inc()
        self.in_progress.inc()
        with self._lock:
            self._jobs_in_progress += 1

    def job_finished(self, status: str, duration_s: float) -> None:
        self.in_progress.dec()
        with self._lock:
            self._jobs_in_progress -= 1
        self.finished.labels(status=status).inc()
        self.job_duration.observe(duration_s)
        self.last_finished.set(time.time())

    def edge_call(self, call: str, duration_s: float, error_kind: str | None) -> None:
        self.edge_call_duration.labels(call=call).observe(duration_s)
        if error_kind is not None:
            self.edge_errors.labels(call=call, kind=error_kind).inc()

    def tick(self) -> None:
        """The main loop proves it is alive."""
        self.last_tick = time.monotonic()

    def health(self, *, stale_after_s: float) -> tuple[bool, dict[str, Any]]:
        age = time.monotonic() - self.last_tick
        why_not = self._why_not_consuming()
        alive = age < stale_after_s
        doc = {
            "status": "ok" if alive else "stalled",
            "version": __version__,
            "main_loop_age_s": round(age, 3),
            "broker_connected": self._is_broker_connected,
            "edge_up": self._is_edge_up,
            "consuming": why_not is None,
            "not_consuming_reason": why_not,
            "jobs_in_progress": self._jobs_in_progress,
        }
        return alive, doc


class MetricsServer:
    """Serves /metrics and /healthz on a small threaded HTTP server."""

    def __init__(self, metrics: Metrics, *, host: str, port: int, stale_after_s: float = 60.0) -> None:
        handler = _make_handler(metrics, stale_after_s)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _make_handler(metrics: Metrics, stale_after_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics.registry))
            elif path == "/healthz":
                alive, doc = metrics.health(stale_after_s=stale_after_s)
                self._send(200 if alive else 503, "application/json", json.dumps(doc).encode())
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
