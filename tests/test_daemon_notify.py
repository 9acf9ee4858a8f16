"""The daemon's conversation with its service manager, over a real AF_UNIX datagram socket.

The test plays systemd: it binds the notify socket, starts `python -m worker run` with `NOTIFY_SOCKET` and
`WATCHDOG_USEC` set, and reads what arrives: `STATUS=` while the worker waits for the broker or the edge,
`READY=1` once it consumes, `WATCHDOG=1` from the loop (outages included), `STOPPING=1` on SIGTERM.
"""

from __future__ import annotations

import itertools
import json
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Producer, ReplyCollector, wait_until
from tests.tlskit import free_port

SHA_REQUEST = {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"cam-1": {"image": b"\x01notify"}}}
# systemd would kill the worker if two pings were further apart than this.
WATCHDOG_USEC = 2_000_000


@dataclass(frozen=True, slots=True)
class Message:
    """One datagram: its assignments, and when it arrived."""

    at: float
    fields: tuple[tuple[str, str], ...]

    def has(self, key: str, value: str | None = None) -> bool:
        return any(k == key and (value is None or v == value) for k, v in self.fields)

    def get(self, key: str) -> str | None:
        return next((v for k, v in self.fields if k == key), None)


class NotifyListener:
    """What systemd would see: every datagram sent to the notify socket, in order."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address
        self._sock = sock
        self._sock.setblocking(False)
        self.messages: list[Message] = []

    def poll(self) -> list[Message]:
        while True:
            try:
                data = self._sock.recv(65536)
            except BlockingIOError:
                return self.messages
            fields = tuple(tuple(line.split("=", 1)) for line in data.decode("utf-8").split("\n") if line)
            assert all(len(f) == 2 for f in fields), f"not KEY=VALUE lines: {data!r}"
            self.messages.append(Message(time.monotonic(), fields))  # type: ignore[arg-type]

    def wait_for(self, key: str, value: str | None = None, *, after: int = 0, timeout_s: float = 20.0) -> int:
        """Index of the first message from index `after` on with key (=value)."""

        def found() -> int | None:
            for index, message in enumerate(self.poll()[after:], start=after):
                if message.has(key, value):
                    return index + 1  # +1: index 0 must count as found
            return None

        index: int = wait_until(found, timeout_s, what=f"{key}={value or '*'} on the notify socket") - 1
        return index

    def statuses(self, start: int = 0, end: int | None = None) -> list[str]:
        return [s for m in self.poll()[start:end] if (s := m.get("STATUS")) is not None]

    def pings(self, start: int = 0) -> list[float]:
        return [m.at for m in self.poll()[start:] if m.has("WATCHDOG", "1")]


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    """A notify socket at a file path (like /run/systemd/notify) or an abstract `@name`."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"edge-worker-test-{secrets.token_hex(8)}"
        sock.bind(b"\0" + name.encode())
        address = "@" + name
    try:
        yield NotifyListener(address, sock)
    finally:
        sock.close()


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[NotifyListener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify.sock")
    sock.bind(address)
    try:
        yield NotifyListener(address, sock)
    finally:
        sock.close()


def under_systemd(worker: Any, listener: NotifyListener) -> Any:
    worker.env["NOTIFY_SOCKET"] = listener.address
    worker.env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    return worker


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status), response.read().decode()


def assert_pings_keep_coming(listener: NotifyListener, *, since: int, count: int = 2) -> None:
    """`count` more WATCHDOG=1 arrive after message `since`, each within the watchdog's limit of the last."""
    wait_until(lambda: len(listener.pings(since)) >= count, 10, what=f"{count} WATCHDOG=1 pings")
    pings = listener.pings(since)
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"pings too far apart for WatchdogSec=2: {gaps}"


def close_connections_of(pid: int) -> int:
    """Close, from the broker's side, every connection the worker process `pid` opened; returns how many."""
    listing = subprocess.run(
        ["rabbitmqctl", "list_connections", "pid", "client_properties", "-q", "--no-table-headers"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    closed = 0
    for line in listing.splitlines():
        connection_pid, _, properties = line.partition("\t")
        if f' pid {pid}"' in properties and '"edge-worker ' in properties:
            subprocess.run(
                ["rabbitmqctl", "close_connection", connection_pid, "test: broker connection lost"],
                capture_output=True,
                check=True,
                timeout=30,
            )
            closed += 1
    return closed


def test_lifecycle_ready_status_watchdog_stopping(
    listener: NotifyListener, emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    port = free_port()
    worker = under_systemd(worker_factory(emulator.url, metrics__listen=f"127.0.0.1:{port}"), listener)
    worker.start(wait_ready=False)

    ready = listener.wait_for("READY", "1")
    # Before READY=1 the manager was told what the worker was waiting for.
    assert any("broker" in status for status in listener.statuses(0, ready)), listener.statuses()
    assert listener.messages[ready].get("STATUS") == f"consuming {worker.env['EDGE_WORKER_AMQP__QUEUE']}: 0 in flight"
    # READY=1 means consuming: the log says so too.
    assert worker.events("broker_consuming")

    mid = producer.publish(SHA_REQUEST)
    assert collector.wait_finals(1)[mid][0]["status"] == "COMPLETE"
    assert_pings_keep_coming(listener, since=ready)

    status, metrics_text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
    assert families["edge_worker_requests_received"].samples[0].value == 1
    status, health_text = http_get(f"http://127.0.0.1:{port}/healthz")
    assert status == 200
    assert json.loads(health_text)["status"] == "ok"

    before_stop = len(listener.poll())
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)
    stopping = listener.wait_for("STOPPING", "1", after=before_stop)
    assert (listener.messages[stopping].get("STATUS") or "").startswith("draining")
    assert worker.proc.wait(30) == 0
    # One READY=1 in the whole life, and nothing claims readiness after STOPPING=1.
    assert sum(m.has("READY", "1") for m in listener.poll()) == 1
    assert [e["exit_code"] for e in worker.events("worker_exit")] == [0]


def test_waiting_for_an_unreachable_broker_is_reported_then_exit_69(
    path_listener: NotifyListener, emulator: Any, worker_factory: Any
) -> None:
    worker = under_systemd(
        worker_factory(emulator.url, amqp__url="amqp://guest:guest@127.0.0.1:1/%2F", worker__startup_timeout=3),
        path_listener,
    )
    worker.start(wait_ready=False)
    assert worker.proc is not None
    assert worker.proc.wait(30) == 69, worker.tail()
    statuses = path_listener.statuses()
    assert statuses[0] == "connecting to the broker"
    assert any(s.startswith("waiting for the broker: ") for s in statuses), statuses
    # The loop ran (and pinged) the whole time it waited: a broker outage is no reason to stop pinging.
    assert_pings_keep_coming(path_listener, since=0)
    assert not any(m.has("READY") for m in path_listener.messages)
    assert worker.events("broker_unreachable")


def test_status_names_why_the_broker_is_unreachable(
    path_listener: NotifyListener, emulator: Any, worker_factory: Any
) -> None:
    worker = under_systemd(
        worker_factory(emulator.url, amqp__url="amqp://guest:guest@127.0.0.1:1/%2F", worker__startup_timeout=1),
        path_listener,
    )
    worker.start(wait_ready=False)
    assert worker.proc is not None
    assert worker.proc.wait(30) == 69, worker.tail()
    statuses = path_listener.statuses()
    assert any("ConnectionRefusedError" in s for s in statuses), statuses


def test_waiting_for_the_edge_at_start_then_ready_when_it_answers(
    path_listener: NotifyListener, emulator: Any, worker_factory: Any
) -> None:
    emulator.stop()
    worker = under_systemd(worker_factory(emulator.url, worker__startup_timeout=20), path_listener)
    worker.start(wait_ready=False)
    waiting = path_listener.wait_for("STATUS", f"waiting for the edge at {emulator.url}")
    assert not any(m.has("READY") for m in path_listener.messages)
    emulator.start()  # the same port: the edge came up late
    ready = path_listener.wait_for("READY", "1", after=waiting)
    assert ready > waiting
    assert worker.events("edge_reachable")


def test_outages_after_ready_change_status_not_the_watchdog(
    path_listener: NotifyListener, emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    port = free_port()
    worker = under_systemd(
        worker_factory(emulator.url, metrics__listen=f"127.0.0.1:{port}", edge__max_attempts=2), path_listener
    )
    worker.start(wait_ready=False)
    ready = path_listener.wait_for("READY", "1")

    # The edge goes away; a request finds out, intake pauses, and the manager is told.
    emulator.stop()
    mid = producer.publish(SHA_REQUEST)
    paused = path_listener.wait_for("STATUS", f"edge unreachable at {emulator.url}: intake paused", after=ready)
    assert_pings_keep_coming(path_listener, since=paused)
    emulator.start()
    path_listener.wait_for("STATUS", f"consuming {worker.env['EDGE_WORKER_AMQP__QUEUE']}: 1 in flight", after=paused)
    assert collector.wait_finals(1)[mid][0]["status"] == "COMPLETE"
    # The job's end is told too (at the next tick): nothing in flight.
    idle = path_listener.wait_for(
        "STATUS", f"consuming {worker.env['EDGE_WORKER_AMQP__QUEUE']}: 0 in flight", after=paused
    )

    # The broker drops the connection; the worker says so, reconnects, and says it consumes again.
    before = max(len(path_listener.poll()), idle + 1)
    assert close_connections_of(worker.pid) == 1
    lost = path_listener.wait_for("STATUS", after=before)
    assert (path_listener.messages[lost].get("STATUS") or "").startswith(
        "waiting for the broker: closed by broker: 320"
    )
    path_listener.wait_for("STATUS", f"consuming {worker.env['EDGE_WORKER_AMQP__QUEUE']}: 0 in flight", after=lost)
    assert_pings_keep_coming(path_listener, since=lost)
    assert sum(m.has("READY") for m in path_listener.poll()) == 1  # readiness is announced once

    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    assert values["edge_worker_broker_reconnects_total"] == 1
    assert values["edge_worker_broker_connected"] == 1
    assert worker.terminate() == 0


def test_status_counts_the_jobs_in_flight_while_they_run(
    path_listener: NotifyListener, emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    """Issue 14: STATUS= said "0 in flight" while three jobs ran; the count now follows them (once a tick)."""
    emulator.set_faults(latency_s=3.0)
    worker = under_systemd(worker_factory(emulator.url, worker__concurrency=4), path_listener)
    worker.start(wait_ready=False)
    queue = worker.env["EDGE_WORKER_AMQP__QUEUE"]
    ready = path_listener.wait_for("READY", "1")
    assert path_listener.messages[ready].get("STATUS") == f"consuming {queue}: 0 in flight"

    ids = [
        producer.publish({"model": SHA_REQUEST["model"], "sources": {"cam-1": {"image": bytes([n])}}}) for n in range(3)
    ]
    running = path_listener.wait_for("STATUS", f"consuming {queue}: 3 in flight", after=ready)
    # Seen while the jobs were still running: none of them has replied yet.
    collector.poll()
    assert collector.finals() == {}
    path_listener.wait_for("STATUS", f"consuming {queue}: 0 in flight", after=running)
    finals = collector.wait_finals(3)
    assert sorted(finals) == sorted(ids)
    assert all(replies[0]["status"] == "COMPLETE" for replies in finals.values())
    # Rate-limited: a count is told at most once a tick (1 s), however fast the jobs come and go.
    told = [m.at for m in path_listener.poll()[ready:] if (m.get("STATUS") or "").endswith("in flight")]
    gaps = [b - a for a, b in itertools.pairwise(told)]
    assert gaps and min(gaps) > 0.5, gaps
    assert worker.terminate() == 0
