"""Shared fixtures: the real broker, the emulator over sockets, a worker process, and a producer.

Every integration test gets queues of its own (unique names) that are deleted afterwards, and every process
it starts is stopped, so tests can run in any order on a shared broker.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import pika
import pika.exceptions
import pytest
import structlog

if TYPE_CHECKING:
    from worker.edge import EdgeClient

BROKER_URL = os.environ.get("TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")


def wait_until(
    predicate: Callable[[], Any], timeout_s: float = 10.0, *, interval_s: float = 0.02, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what or predicate}")
        time.sleep(interval_s)  # sleep-ok: the poll interval of a deadline-bounded wait


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Tests that configure logging must not leak it into the next test."""
    yield
    structlog.reset_defaults()


def broker_available() -> bool:
    try:
        pika.BlockingConnection(pika.URLParameters(BROKER_URL + "?socket_timeout=2&connection_attempts=1")).close()
    except (pika.exceptions.AMQPError, OSError):
        return False
    return True


@pytest.fixture(scope="session")
def broker_url() -> str:
    """The real broker; in CI its absence fails the run instead of skipping it."""
    if not broker_available():
        if os.environ.get("CI"):
            pytest.fail(f"RabbitMQ is not reachable at {BROKER_URL} (CI must start it)")
        pytest.skip(f"RabbitMQ is not reachable at {BROKER_URL}")
    return BROKER_URL


@dataclass
class Queues:
    """Unique queue names for one test; the worker declares them, the fixture deletes them."""

    prefix: str
    queue: str = ""
    reply_queue: str = ""
    dead_letter_queue: str = ""
    extra: list[str] = field(default_factory=list)  # other queues a test made, deleted with these

    def __post_init__(self) -> None:
        self.queue = f"{self.prefix}.jobs"
        self.reply_queue = f"{self.prefix}.replies"
        self.dead_letter_queue = f"{self.prefix}.jobs.dead"

    def all(self) -> list[str]:
        return [self.queue, self.reply_queue, self.dead_letter_queue]


@pytest.fixture
def queues(broker_url: str, request: pytest.FixtureRequest) -> Iterator[Queues]:
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    q = Queues(prefix=f"test.{name}.{uuid.uuid4().hex[:8]}")
    yield q
    delete_queues(broker_url, [*q.all(), *q.extra])


def delete_queues(url: str, names: list[str]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        for name in names:
            channel = connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosed):
                channel.queue_delete(name)
            with contextlib.suppress(pika.exceptions.AMQPError):
                channel.close()
    finally:
        connection.close()


@pytest.fixture
def emulator() -> Iterator[Any]:
    """The edge emulator, in this process, on free ports (its gRPC face too, given grpcio); 0.05 s jobs, 8 slots."""
    from worker.emulator import EdgeEmulator, EmulatorConfig

    emu = EdgeEmulator(EmulatorConfig(port=0, grpc_port=GRPC_PORT, latency_s=0.05, capacity=8))
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


# -- the edge transports ---------------------------------------------------------------------------

TRANSPORTS = ("http", "grpc")
HAVE_GRPC = importlib.util.find_spec("grpc") is not None  # the optional [grpc] extra
GRPC_PORT = 0 if HAVE_GRPC else None  # an emulator's grpc_port: a free port, or no gRPC face without grpcio


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "both_transports: run once over each edge transport (test ids [http] and [grpc])"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked both_transports runs once per transport; the id names it (`-k grpc` selects those)."""
    if metafunc.definition.get_closest_marker("both_transports") is None:
        return
    if "transport" not in metafunc.fixturenames:
        raise pytest.UsageError(f"{metafunc.definition.nodeid} is marked both_transports but uses no `transport`")
    metafunc.parametrize("transport", TRANSPORTS, indirect=True)


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    """The edge transport of this test: "http" unless the test is marked both_transports."""
    name: str = getattr(request, "param", "http")
    if name == "grpc" and not HAVE_GRPC:
        if os.environ.get("CI"):
            pytest.fail("grpcio is not installed: CI must install edge-worker[grpc]")
        pytest.skip("grpcio is not installed (pip install 'edge-worker[grpc]')")
    return name


def edge_url(emu: Any, transport: str) -> str:
    """The worker's edge.url for this emulator over this transport: its HTTP url or grpc://host:port."""
    if transport == "grpc":
        assert emu.grpc_target is not None, "this emulator was started without a gRPC face (grpc_port=0)"
        return f"grpc://{emu.grpc_target}"
    assert transport == "http", transport
    return str(emu.url)


def edge_client(emu: Any, transport: str, **settings: Any) -> EdgeClient:
    """The worker's own edge client for this emulator and transport, via worker.edge.make_edge_client."""
    from worker.config import EdgeConfig
    from worker.edge import make_edge_client

    defaults: dict[str, Any] = {"request_timeout": 10, "max_attempts": 2}
    return make_edge_client(EdgeConfig(url=edge_url(emu, transport), **{**defaults, **settings}))


def assert_spoke_only(emu: Any, transport: str) -> None:
    """Every call the emulator counted came over this transport's face (and some did)."""
    by_face = emu.stats()["calls_by_face"]
    assert by_face[transport] > 0 and sum(by_face.values()) == by_face[transport], by_face


# -- the worker as a real process ------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """`python -m worker run` with its configuration in the environment; its JSON log lines are kept."""

    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _lines: list[dict[str, Any]] = field(default_factory=list)
    _read_pos: int = 0

    def start(self, *, wait_ready: bool = True, timeout_s: float = 20.0) -> WorkerProcess:
        # The log file is appended to across restarts: read only what this process writes.
        self._lines.clear()
        self._read_pos = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if wait_ready:
            self.wait_for_event("broker_consuming", timeout_s=timeout_s)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def lines(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far by the current process (non-JSON lines are kept as text)."""
        with self.log_path.open("rb") as f:
            f.seek(self._read_pos)
            chunk = f.read()
        complete = chunk.rfind(b"\n") + 1
        self._read_pos += complete
        for raw in chunk[:complete].splitlines():
            try:
                self._lines.append(json.loads(raw))
            except ValueError:
                self._lines.append({"event": "<not json>", "text": raw.decode("utf-8", "replace")})
        return self._lines

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == name]

    def wait_for_event(self, name: str, *, count: int = 1, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        def seen() -> list[dict[str, Any]] | None:
            if self.proc is not None and self.proc.poll() is not None and len(self.events(name)) < count:
                raise AssertionError(f"worker exited with {self.proc.returncode} before {name!r}: {self.tail()}")
            found = self.events(name)
            return found if len(found) >= count else None

        result: list[dict[str, Any]] = wait_until(seen, timeout_s, what=f"{count} x {name!r} in the worker's log")
        return result

    def tail(self, n: int = 15) -> str:
        return "\n".join(json.dumps(line) for line in self.lines()[-n:])

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so that fixtures can tell a failed test at teardown."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def worker_factory(
    broker_url: str, queues: Queues, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., WorkerProcess]]:
    """Make worker processes wired to this test's queues; all are killed at teardown.

    When the test failed, the end of each worker's log is printed (pytest shows it with the failure): the
    log files live in a temporary directory that later runs remove.
    """
    made: list[WorkerProcess] = []

    def make(edge_url: str, *, state_dir: Path | None = None, **overrides: Any) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
        env.update(
            {
                "EDGE_WORKER_AMQP__URL": broker_url,
                "EDGE_WORKER_AMQP__QUEUE": queues.queue,
                "EDGE_WORKER_AMQP__REPLY_QUEUE": queues.reply_queue,
                "EDGE_WORKER_AMQP__DEAD_LETTER_QUEUE": queues.dead_letter_queue,
                "EDGE_WORKER_EDGE__URL": edge_url,
                "EDGE_WORKER_WORKER__STATE_DIR": str(state_dir or tmp_path / f"state{len(made)}"),
                "EDGE_WORKER_LOG__FORMAT": "json",
                "EDGE_WORKER_LOG__LEVEL": "info",
                "PYTHONUNBUFFERED": "1",
            }
        )
        for key, value in overrides.items():
            section, _, name = key.partition("__")
            env[f"EDGE_WORKER_{section.upper()}__{name.upper()}"] = str(value)
        proc = WorkerProcess(env=env, log_path=tmp_path / f"worker{len(made)}.log")
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()
    failed = getattr(request.node, "report_call", None)
    if failed is not None and failed.failed:
        for proc in made:
            lines = proc.log_path.read_text(errors="replace").splitlines() if proc.log_path.exists() else []
            print(f"--- {proc.log_path.name}: last {min(60, len(lines))} of {len(lines)} lines ---")
            print("\n".join(lines[-60:]))


# -- the producer side -----------------------------------------------------------------------------


class Producer:
    """Publishes raw requests and reads replies and dead letters, over its own connection."""

    def __init__(self, url: str, queues: Queues) -> None:
        self.queues = queues
        self._connection = pika.BlockingConnection(pika.URLParameters(url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        self._lock = threading.Lock()

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            self._connection.close()

    def publish(
        self,
        request: Any,
        *,
        raw: bytes | None = None,
        message_id: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | bool | None = True,
        content_type: str | None = "application/msgpack",
        headers: dict[str, Any] | None = None,
        queue: str | None = None,
    ) -> str:
        """Publish one request; returns the message_id. reply_to=True means this test's reply queue."""
        body = raw if raw is not None else msgpack.packb(request, use_bin_type=True)
        message_id = message_id if message_id is not None else uuid.uuid4().hex
        props = pika.BasicProperties(
            content_type=content_type,
            delivery_mode=2,
            message_id=message_id or None,
            correlation_id=correlation_id,
            reply_to=self.queues.reply_queue if reply_to is True else (reply_to or None),
            headers=headers,
        )
        with self._lock:
            self._channel.basic_publish("", queue or self.queues.queue, body, props)
        return message_id

    def drain(self, queue: str) -> list[tuple[Any, bytes]]:
        """Take every message now on `queue` (acknowledged)."""
        out: list[tuple[Any, bytes]] = []
        with self._lock:
            while True:
                method, props, body = self._channel.basic_get(queue, auto_ack=True)
                if method is None:
                    return out
                out.append((props, body))

    def replies(self, queue: str | None = None) -> list[tuple[Any, dict[str, Any]]]:
        return [(p, msgpack.unpackb(b, raw=False)) for p, b in self.drain(queue or self.queues.reply_queue)]

    def message_count(self, queue: str) -> int:
        with self._lock:
            count: int = self._channel.queue_declare(queue, passive=True).method.message_count
        return count


@pytest.fixture
def producer(broker_url: str, queues: Queues) -> Iterator[Producer]:
    p = Producer(broker_url, queues)
    yield p
    p.close()


class ReplyCollector:
    """Accumulates replies from a queue across polls, keyed by correlation_id."""

    def __init__(self, producer: Producer, queue: str | None = None) -> None:
        self._producer = producer
        self._queue = queue
        self.all: list[tuple[Any, dict[str, Any]]] = []

    def poll(self) -> list[tuple[Any, dict[str, Any]]]:
        self.all.extend(self._producer.replies(self._queue))
        return self.all

    def finals(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for props, reply in self.all:
            if reply.get("final"):
                out.setdefault(props.correlation_id, []).append(reply)
        return out

    def wait_finals(self, count: int, timeout_s: float = 30.0) -> dict[str, list[dict[str, Any]]]:
        def enough() -> bool:
            self.poll()
            return len(self.finals()) >= count

        wait_until(enough, timeout_s, interval_s=0.05, what=f"{count} final replies")
        return self.finals()


@pytest.fixture
def collector(producer: Producer) -> ReplyCollector:
    return ReplyCollector(producer)
