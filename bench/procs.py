"""Process control: the emulator and consumers as child processes, the broker as producer and reply sink,
and the Scope that starts a scenario's processes and queues and always takes them down again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
import pika
import pika.exceptions
import requests

from bench.plan import (
    CLK_TCK,
    REPO,
    STALL_S,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    BenchError,
)

if TYPE_CHECKING:
    from bench.measure import Bench


# -- processes ---------------------------------------------------------------------------------------


class Child:
    """A process the benchmark started; CPU time and memory are read from /proc."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as log:
            # A session of its own: a Ctrl-C at the terminal reaches the benchmark, which stops it in order.
            self.proc = subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._paused = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_s(self) -> float:
        """User + system CPU seconds of all its threads so far."""
        data = Path(f"/proc/{self.pid}/stat").read_text()
        fields = data.rsplit(")", 1)[1].split()  # fields[0] is field 3 (state); utime is 14, stime 15
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def cpu_s_fine(self) -> float:
        """On-CPU seconds of its live threads in nanoseconds' resolution (schedstat); ticks are too coarse at idle."""
        total_ns = 0
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended meanwhile
                total_ns += int((task / "schedstat").read_text().split()[0])
        return total_ns / 1e9

    def status_kib(self, key: str) -> int:
        """A line of /proc/<pid>/status in KiB, e.g. VmRSS or VmHWM."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0])
        raise BenchError(f"{self.name}: no {key} in /proc/{self.pid}/status")

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        if self._paused and self.alive():
            self.proc.send_signal(signal.SIGCONT)
        self._paused = False

    def check(self, doing: str) -> None:
        if not self.alive():
            raise BenchError(f"{self.name} exited with {self.proc.returncode} while {doing}; its log:\n{self.tail()}")

    def tail(self, lines: int = 12) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.alive():
            self.resume()
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        return self.proc.returncode


# -- the broker, as producer and reply consumer ----------------------------------------------------


class Broker:
    """The benchmark's one connection: admin calls, publishing and reply consumption, all on this thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: Any = None

    @property
    def connection(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
        return self._connection

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                self._connection.close()
        self._connection = None

    def sleep(self, seconds: float) -> None:
        """Wait while keeping the connection's heartbeats going."""
        self.connection.sleep(seconds)

    def server_version(self) -> str:
        props = self.connection._impl.server_properties or {}
        version = props.get("version") or props.get(b"version") or "unknown"
        return version.decode() if isinstance(version, bytes) else str(version)

    def queue_counts(self, queue: str) -> tuple[int, int] | None:
        """(messages ready, consumers), or None when the queue does not exist."""
        channel = self.connection.channel()
        try:
            ok = channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker:
            return None
        with contextlib.suppress(pika.exceptions.AMQPError):
            channel.close()
        return int(ok.method.message_count), int(ok.method.consumer_count)

    def declare(self, queue: str, arguments: dict[str, Any]) -> None:
        channel = self.connection.channel()
        channel.queue_declare(queue, durable=True, arguments=arguments)
        channel.close()

    def delete(self, queues: Sequence[str]) -> None:
        for name in queues:
            channel = self.connection.channel()
            with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                channel.queue_delete(name)
            with contextlib.suppress(pika.exceptions.AMQPError):
                channel.close()


class Publisher:
    """Publishes requests the way worker.client does: persistent, message_id = correlation_id, reply_to."""

    def __init__(self, broker: Broker, queue: str, reply_to: str, *, confirm: bool) -> None:
        self._channel = broker.connection.channel()
        if confirm:
            self._channel.confirm_delivery()
        self._queue = queue
        self._reply_to = reply_to

    def publish(self, body: bytes) -> str:
        message_id = uuid.uuid4().hex
        self._channel.basic_publish(
            "",
            self._queue,
            body,
            pika.BasicProperties(
                content_type="application/msgpack",
                delivery_mode=2,
                message_id=message_id,
                correlation_id=message_id,
                reply_to=self._reply_to,
            ),
        )
        return message_id

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            self._channel.close()


class ReplySink:
    """Consumes a reply queue and records when each final reply arrived (perf_counter)."""

    def __init__(self, broker: Broker, queue: str) -> None:
        self._broker = broker
        self._channel = broker.connection.channel()
        self.expected: set[str] = set()
        self.arrivals: dict[str, float] = {}
        self.replies: dict[str, dict[str, Any]] = {}
        self._channel.basic_consume(queue, self._on_reply, auto_ack=True)

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        now = time.perf_counter()
        reply = msgpack.unpackb(body, raw=False)
        if not isinstance(reply, dict) or not reply.get("final"):
            return
        correlation_id = properties.correlation_id or ""
        if correlation_id in self.expected and correlation_id not in self.arrivals:
            self.arrivals[correlation_id] = now
            self.replies[correlation_id] = reply

    def expect(self, ids: Sequence[str]) -> None:
        self.expected = set(ids)
        self.arrivals = {}
        self.replies = {}

    def wait(self, *, watch: Sequence[Child], doing: str, stall_s: float = STALL_S) -> None:
        """Until every expected final reply is in; fails when none arrives for stall_s or a process dies."""
        seen = -1
        last_progress = time.monotonic()
        while len(self.arrivals) < len(self.expected):
            self._broker.connection.process_data_events(time_limit=0.05)
            if len(self.arrivals) != seen:
                seen = len(self.arrivals)
                last_progress = time.monotonic()
                continue
            for child in watch:
                child.check(doing)
            if time.monotonic() - last_progress > stall_s:
                raise BenchError(
                    f"stalled while {doing}: {seen} of {len(self.expected)} final replies, none for {stall_s:g} s"
                    + "".join(f"\n{c.name} log tail:\n{c.tail()}" for c in watch)
                )

    def close(self) -> None:
        with contextlib.suppress(pika.exceptions.AMQPError):
            self._channel.close()


@dataclass
class Queues:
    """Fresh queue names for one scenario."""

    prefix: str

    @property
    def queue(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def reply(self) -> str:
        return f"{self.prefix}.replies"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.jobs.dead"

    def all(self) -> list[str]:
        return [self.queue, self.reply, self.dead]


# -- one scenario's resources ------------------------------------------------------------------------


@dataclass
class Emulator:
    child: Child
    url: str
    grpc_target: str | None = None  # host:port of its gRPC face, when it has one

    @property
    def grpc_url(self) -> str:
        assert self.grpc_target is not None, "this emulator has no gRPC face"
        return f"grpc://{self.grpc_target}"

    def stats(self) -> dict[str, Any]:
        self.child.check("asked for its stats")
        response = requests.get(f"{self.url}/_emulator/stats", timeout=30)
        response.raise_for_status()
        stats: dict[str, Any] = response.json()
        return stats

    def reset(self) -> None:
        self.child.check("asked to reset its stats")
        requests.post(f"{self.url}/_emulator/reset", timeout=30).raise_for_status()


class Scope:
    """The processes and queues of one scenario; all stopped and deleted on exit, whatever happened."""

    def __init__(self, bench: Bench, name: str) -> None:
        self.bench = bench
        self.name = name
        self.children: list[Child] = []
        self.queue_names: list[str] = []

    def __enter__(self) -> Scope:
        return self

    def __exit__(self, *_exc: object) -> None:
        for child in reversed(self.children):
            child.stop()
        for _ in range(2):  # the connection may have died with the scenario: the second try reconnects
            try:
                self.bench.broker.delete(self.queue_names)
                return
            except (pika.exceptions.AMQPError, OSError) as exc:
                error = exc
                self.bench.broker.close()
        print(f"  could not delete queues {', '.join(self.queue_names)}: {error!r}", flush=True)

    def queues(self) -> Queues:
        q = Queues(prefix=f"bench.{self.name}.{uuid.uuid4().hex[:8]}")
        self.queue_names.extend(q.all())
        return q

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        child = Child(name, argv, env, self.bench.workdir / f"{self.name}-{name}-{uuid.uuid4().hex[:6]}.log")
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def emulator(self, *, latency_s: float, capacity: int, grpc: bool = False) -> Emulator:
        """The emulator; with grpc, its gRPC face too (on a free port)."""
        argv = [sys.executable, "-m", "worker", "emulator", "--port", "0"]
        argv += ["--latency", str(latency_s), "--capacity", str(capacity)]
        if grpc:
            argv += ["--grpc-port", "0"]
        child = self.spawn(f"emulator-{latency_s:g}s-x{capacity}", argv, _base_env())

        def listening() -> dict[str, Any] | None:
            for line in child.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") == "emulator_listening":
                        return event
            return None

        event = self.bench.wait_for(listening, START_TIMEOUT_S, "the emulator's listening line", watch=[child])
        target = event.get("grpc_target")
        return Emulator(child=child, url=str(event["url"]), grpc_target=str(target) if target else None)

    def worker(
        self,
        emulator: Emulator,
        queues: Queues,
        *,
        concurrency: int,
        queue_type: str = "quorum",
        lookahead: int | None = None,
        grpc: bool = False,
    ) -> Child:
        """`python -m worker run` on these queues; lookahead None keeps the worker's default; grpc: grpc:// edge."""
        env = _base_env()
        env.update(
            {
                "EDGE_WORKER_AMQP__URL": self.bench.broker.url,
                "EDGE_WORKER_AMQP__QUEUE": queues.queue,
                "EDGE_WORKER_AMQP__REPLY_QUEUE": queues.reply,
                "EDGE_WORKER_AMQP__DEAD_LETTER_QUEUE": queues.dead,
                "EDGE_WORKER_EDGE__URL": emulator.grpc_url if grpc else emulator.url,
                "EDGE_WORKER_WORKER__CONCURRENCY": str(concurrency),
                "EDGE_WORKER_WORKER__STATE_DIR": str(self.bench.workdir / f"state-{uuid.uuid4().hex[:8]}"),
                "EDGE_WORKER_LOG__FORMAT": "json",
                "EDGE_WORKER_LOG__LEVEL": "warning",
                "EDGE_WORKER_AMQP__QUEUE_TYPE": queue_type,
            }
        )
        if lookahead is not None:
            env["EDGE_WORKER_WORKER__LOOKAHEAD"] = str(lookahead)
        name = (
            f"worker-c{concurrency}" + (f"-l{lookahead}" if lookahead is not None else "") + ("-grpc" if grpc else "")
        )
        child = self.spawn(name, [sys.executable, "-m", "worker", "run"], env)
        self._wait_consuming(child, queues.queue)
        return child

    def echo(self, queues: Queues, *, queue_type: str = "quorum") -> Child:
        """The broker's share (bench/floor.py): a consumer that replies at once, confirm then ack."""
        argv = [sys.executable, "-m", "bench.floor", "echo", "--amqp-url", self.bench.broker.url]
        argv += ["--queue", queues.queue, "--reply-queue", queues.reply, "--dead-letter-queue", queues.dead]
        argv += ["--queue-type", queue_type]
        child = self.spawn(f"echo-{queue_type}", argv, _base_env())
        self._wait_consuming(child, queues.queue)
        return child

    def naive(self, emulator: Emulator, queues: Queues) -> Child:
        """The baseline consumer on the same queues (which a worker has declared before)."""
        argv = [sys.executable, "-m", "bench.naive_consumer", "--amqp-url", self.bench.broker.url]
        argv += ["--queue", queues.queue, "--edge-url", emulator.url]
        child = self.spawn("naive", argv, _base_env())
        self._wait_consuming(child, queues.queue)
        return child

    def _wait_consuming(self, child: Child, queue: str) -> None:
        def consuming() -> bool:
            counts = self.bench.broker.queue_counts(queue)
            return counts is not None and counts[1] >= 1

        self.bench.wait_for(consuming, START_TIMEOUT_S, f"{child.name} consuming {queue}", watch=[child])


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env
