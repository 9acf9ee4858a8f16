"""/metrics, /healthz and `edge-worker healthcheck`, against a real worker, broker and emulator.

The scrape is parsed with prometheus-client's own text parser, so a name, a type or a label that a
Prometheus server would read differently fails here too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import Producer, ReplyCollector, wait_until
from tests.tlskit import free_port
from worker import __version__
from worker.metrics import Metrics, MetricsServer

SHA_REQUEST = {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"cam-1": {"image": b"\x02metrics"}}}

# Every series of the operator documentation: family name (as the parser names it) → (type, label names).
DOCUMENTED: dict[str, tuple[str, frozenset[str]]] = {
    "edge_worker_requests_received": ("counter", frozenset()),
    "edge_worker_jobs_finished": ("counter", frozenset({"status"})),
    "edge_worker_jobs_in_progress": ("gauge", frozenset()),
    "edge_worker_job_duration_seconds": ("histogram", frozenset()),
    "edge_worker_edge_call_duration_seconds": ("histogram", frozenset({"call"})),
    "edge_worker_edge_errors": ("counter", frozenset({"call", "kind"})),
    "edge_worker_edge_up": ("gauge", frozenset()),
    "edge_worker_broker_connected": ("gauge", frozenset()),
    "edge_worker_consuming": ("gauge", frozenset()),
    "edge_worker_broker_reconnects": ("counter", frozenset()),
    "edge_worker_replies_published": ("counter", frozenset()),
    "edge_worker_dead_letters": ("counter", frozenset({"code"})),
    "edge_worker_last_job_finished_timestamp_seconds": ("gauge", frozenset()),
    "edge_worker_build_info": ("gauge", frozenset({"version"})),
}
# Label values are drawn from small fixed sets; anything else would be a per-job label in disguise.
FINAL_STATUSES = {"COMPLETE", "FAILED", "CANCELED", "TIMEOUT", "REJECTED", "ERROR", "REQUEUED", "REPLAYED"}
EDGE_CALLS = {"features", "submit", "status", "results", "cancel", "chunk", "close"}


class Scrape:
    """One parsed /metrics answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def samples(self, name: str) -> list[Sample]:
        return [s for f in self.families.values() for s in f.samples if s.name == name]

    def value(self, name: str, **labels: str) -> float:
        matching = [s.value for s in self.samples(name) if all(s.labels.get(k) == v for k, v in labels.items())]
        assert len(matching) == 1, f"{name}{labels}: {len(matching)} samples in\n{self.text}"
        return float(matching[0])


def http_get(url: str) -> tuple[int, dict[str, str], str]:
    """GET that returns error statuses instead of raising them."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(exc.headers), exc.read().decode()


def scrape(port: int) -> Scrape:
    status, headers, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")  # the Prometheus text format
    return Scrape(text)


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    status, headers, text = http_get(f"http://127.0.0.1:{port}/healthz")
    assert headers["Content-Type"] == "application/json"
    document: dict[str, Any] = json.loads(text)
    return status, document


def test_scrape_has_every_documented_series_with_counts_that_match(
    emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector, queues: Any
) -> None:
    port = free_port()
    started_at = time.time()
    worker = worker_factory(emulator.url, metrics__listen=f"127.0.0.1:{port}", edge__max_attempts=2).start()
    ids = [producer.publish(SHA_REQUEST) for _ in range(5)]
    rejected = producer.publish(None, raw=b"\xc1 not msgpack")
    finals = collector.wait_finals(6)
    assert [finals[i][0]["status"] for i in ids] == ["COMPLETE"] * 5
    assert finals[rejected][0]["status"] == "REJECTED"

    # An edge failure: every call answers 503 until the worker has counted some, then the edge heals.
    emulator.set_faults(fail_rate=1.0)
    faulted = producer.publish(SHA_REQUEST)
    wait_until(lambda: scrape(port).samples("edge_worker_edge_errors_total"), 15, what="an edge error counted")
    emulator.set_faults(fail_rate=0.0)
    assert collector.wait_finals(7)[faulted][0]["status"] == "COMPLETE"
    ids.append(faulted)
    wait_until(lambda: scrape(port).value("edge_worker_edge_up") == 1, 15, what="edge_up back to 1")

    s = scrape(port)
    # Names, types and label names: every documented family, and no edge_worker_ family that is not documented
    # (prometheus-client adds a `<name>_created` gauge next to each counter and histogram: its creation time).
    for name, (kind, label_names) in DOCUMENTED.items():
        assert name in s.families, f"{name} missing from\n{s.text}"
        family = s.families[name]
        assert family.type == kind, f"{name}: {family.type}, expected {kind}"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == label_names, sample
    extra = {n for n in s.families if n.startswith("edge_worker_") and n not in DOCUMENTED}
    assert all(n.endswith("_created") and n.removesuffix("_created") in DOCUMENTED for n in extra), extra

    # No per-job label: no job's ids anywhere in the scrape, and every label value from a small fixed set.
    job_ids = {r["job_identifier"] for replies in collector.finals().values() for r in replies if r["job_identifier"]}
    assert len(job_ids) == 6
    for identifier in [*ids, rejected, *job_ids]:
        assert identifier not in s.text
    assert not re.search(r"(request_id|message_id|correlation_id|job_identifier|job_id)=", s.text)
    labels = [sample.labels for f in s.families.values() for sample in f.samples]
    assert {lb["status"] for lb in labels if "status" in lb} <= FINAL_STATUSES
    assert {lb["call"] for lb in labels if "call" in lb} <= EDGE_CALLS
    assert {lb["kind"] for lb in labels if "kind" in lb} <= {"connection", "timeout", "request", "http_4xx", "http_5xx"}

    # Values match what happened: 7 deliveries, 6 complete, 1 rejected and dead-lettered, 7 replies confirmed.
    assert s.value("edge_worker_requests_received_total") == 7
    assert s.value("edge_worker_jobs_finished_total", status="COMPLETE") == 6
    assert s.value("edge_worker_jobs_finished_total", status="REJECTED") == 1
    assert s.value("edge_worker_jobs_in_progress") == 0
    assert s.value("edge_worker_replies_published_total") == 7
    assert s.value("edge_worker_dead_letters_total", code="INVALID_REQUEST") == 1
    assert producer.message_count(queues.dead_letter_queue) == 1
    assert s.value("edge_worker_broker_connected") == 1
    assert s.value("edge_worker_consuming") == 1
    assert s.value("edge_worker_broker_reconnects_total") == 0
    assert s.value("edge_worker_edge_up") == 1
    assert started_at <= s.value("edge_worker_last_job_finished_timestamp_seconds") <= time.time()
    assert s.value("edge_worker_build_info", version=__version__) == 1

    # Histograms: cumulative buckets ending in +Inf == _count, in seconds (the 0.05 s jobs are well under 60).
    assert s.value("edge_worker_job_duration_seconds_count") == 7
    buckets = [x.value for x in s.samples("edge_worker_job_duration_seconds_bucket")]
    assert buckets == sorted(buckets)
    assert s.value("edge_worker_job_duration_seconds_bucket", le="+Inf") == 7
    assert 0 < s.value("edge_worker_job_duration_seconds_sum") < 60
    # Each job: one submit (the faulted one retried it), and one results read, or two when the first look
    # came before the job's end (by design about one first look in 14: README, "Following a job").
    assert s.value("edge_worker_edge_call_duration_seconds_count", call="submit") >= 6
    assert 6 <= s.value("edge_worker_edge_call_duration_seconds_count", call="results") <= 12
    errors = {(x.labels["call"], x.labels["kind"]): x.value for x in s.samples("edge_worker_edge_errors_total")}
    assert errors, s.text
    assert set(errors) <= {(call, "http_5xx") for call in EDGE_CALLS}
    assert worker.terminate() == 0


def test_healthz_reports_an_edge_outage_in_the_body_and_stays_200(
    emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    port = free_port()
    worker_factory(emulator.url, metrics__listen=f"127.0.0.1:{port}", edge__max_attempts=2).start()
    status, doc = healthz(port)
    assert status == 200
    assert set(doc) == {
        "status",
        "version",
        "main_loop_age_s",
        "broker_connected",
        "edge_up",
        "consuming",
        "not_consuming_reason",
        "jobs_in_progress",
    }
    assert doc["status"] == "ok"
    assert doc["version"] == __version__
    assert 0 <= doc["main_loop_age_s"] < 2  # the loop ticks every second
    assert doc["broker_connected"] is True
    assert doc["edge_up"] is True

    emulator.stop()
    mid = producer.publish(SHA_REQUEST)  # the worker learns of the outage from a request
    status, doc = wait_until(lambda: (r := healthz(port))[1]["edge_up"] is False and r, 15, what="edge_up false")
    assert status == 200  # an outage is not a liveness failure: restarting would not bring the edge back
    assert doc["status"] == "ok"
    assert doc["broker_connected"] is True
    assert doc["jobs_in_progress"] == 1
    assert scrape(port).value("edge_worker_edge_up") == 0

    emulator.start()
    wait_until(lambda: healthz(port)[1]["edge_up"] is True, 15, what="edge_up true again")
    assert collector.wait_finals(1)[mid][0]["status"] == "COMPLETE"
    assert healthz(port)[1]["jobs_in_progress"] == 0


def test_healthz_reports_a_broker_outage_in_the_body_and_stays_200(emulator: Any, worker_factory: Any) -> None:
    port = free_port()
    worker = worker_factory(
        emulator.url,
        metrics__listen=f"127.0.0.1:{port}",
        amqp__url="amqp://guest:guest@127.0.0.1:1/%2F",
        worker__startup_timeout=30,
    )
    worker.start(wait_ready=False)
    worker.wait_for_event("broker_connect_failed", count=2)
    status, doc = healthz(port)
    assert status == 200
    assert doc["status"] == "ok"
    assert doc["broker_connected"] is False
    assert doc["edge_up"] is True
    assert scrape(port).value("edge_worker_broker_connected") == 0
    # Stopping while still waiting for the broker is a clean stop.
    assert worker.terminate() == 0


@pytest.fixture
def metrics_server() -> Iterator[tuple[Metrics, int]]:
    metrics = Metrics()
    server = MetricsServer(metrics, host="127.0.0.1", port=0, stale_after_s=5.0)
    server.start()
    try:
        yield metrics, server.address[1]
    finally:
        server.stop()


def test_healthz_is_503_when_the_loop_stops_ticking(metrics_server: tuple[Metrics, int]) -> None:
    metrics, port = metrics_server
    metrics.tick()
    assert healthz(port)[0] == 200
    metrics.last_tick -= 6.0  # as if the loop had hung for 6 s, past stale_after_s=5
    status, doc = healthz(port)
    assert status == 503
    assert doc["status"] == "stalled"
    assert doc["main_loop_age_s"] >= 6.0
    metrics.tick()
    assert healthz(port)[0] == 200
    assert http_get(f"http://127.0.0.1:{port}/nothing-here")[0] == 404


# -- edge-worker healthcheck ---------------------------------------------------------------------------


def run_healthcheck(broker_url: str, edge_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
    env.update({"EDGE_WORKER_AMQP__URL": broker_url, "EDGE_WORKER_EDGE__URL": edge_url})
    return subprocess.run(
        [sys.executable, "-m", "worker", "healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_healthcheck_exits_0_when_broker_and_edge_answer(broker_url: str, emulator: Any) -> None:
    result = run_healthcheck(broker_url, emulator.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == f"ok: broker and edge {emulator.url} answer\n"
    assert result.stderr == ""


def test_healthcheck_exits_1_naming_the_edge_when_it_is_down(broker_url: str, emulator: Any) -> None:
    emulator.stop()
    result = run_healthcheck(broker_url, emulator.url)
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith(f"unhealthy: edge {emulator.url} unreachable")
    assert "broker" not in result.stdout
    assert result.stderr == ""


def test_healthcheck_exits_1_naming_the_broker_when_it_is_unreachable(broker_url: str, emulator: Any) -> None:
    result = run_healthcheck("amqp://guest:guest@127.0.0.1:1/%2F", emulator.url)
    assert result.returncode == 1
    assert result.stdout == "unhealthy: broker amqp://guest:****@127.0.0.1:1/%2F unreachable (ConnectionRefusedError)\n"
    assert result.stderr == ""


def test_healthcheck_names_both_when_both_are_down(emulator: Any) -> None:
    emulator.stop()
    result = run_healthcheck("amqp://guest:guest@127.0.0.1:1/%2F", emulator.url)
    assert result.returncode == 1
    assert result.stdout.count("\n") == 1
    assert "broker amqp://guest:****@127.0.0.1:1/%2F unreachable" in result.stdout
    assert f"edge {emulator.url} unreachable" in result.stdout
