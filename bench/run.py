"""The benchmark of issue 4: edge-worker against the real broker and the edge emulator, as separate processes.

    python -m bench.run            # the full run (about 5 minutes); writes bench/results/
    python -m bench.run --quick    # a smoke run (under a minute); writes bench/results/quick/

The benchmark process, the emulator (`python -m worker emulator`) and the consumer under test (`python -m worker
run`, or the naive baseline `python -m bench.naive_consumer`) are three processes, so none shares another's GIL.
A consumer's CPU time is its own accounting (utime + stime of /proc/<pid>/stat, all threads) and its peak memory
is VmHWM from /proc/<pid>/status.

How a throughput run is timed: the consumer is paused (SIGSTOP), every request is published (confirmed) onto its
queue, then the consumer is resumed (SIGCONT) and the clock runs from that moment to the arrival of the last
final reply. So publishing costs nothing inside the window, and the window holds exactly the consumer's work
on a full queue. CPU ms per job is the consumer's CPU time over the same window divided by the jobs.

Every figure is the median of `repeats` runs, and every comparison is measured in the same invocation on the
same emulator process. A scenario that stalls (no reply for 20 s, or a process that dies) is reported as failed
with what was seen, and the run goes on with the next one.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import msgpack
import pika
import pika.exceptions
import requests

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
BROKER_URL = os.environ.get("EDGE_WORKER_BENCH_BROKER", "amqp://guest:guest@127.0.0.1:5672/%2F")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024
MODEL = {"identifier": "ed542963de", "version": "1.0.1"}
HASH_MODEL = {"identifier": "sha256", "version": "1.0.0"}
STALL_S = 20.0  # a run in which no reply arrives for this long has stalled
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.02

# The targets of issue 4.
TARGET_SPEEDUP = 1.5
TARGET_CPU_RATIO = 0.8
TARGET_REALISTIC = 0.90
TARGET_SATURATION = 0.95
TARGET_LATENCY_MS = 6.0
TARGET_IDLE_CPU_PCT = 0.5
TARGET_IDLE_RSS_MIB = 60.0
LARGE_BOUND_EXTRA_MIB = 60.0

REALISTIC = (0.05, 8)  # emulator: seconds per job, slots -> ideal 160 jobs/s
SATURATION = (0.1, 4)  # ideal 40 jobs/s
CONCURRENCIES = (1, 2, 4, 8, 16)
DEFAULT_CONCURRENCY = 8


class BenchError(Exception):
    """A scenario stalled or went wrong; the message says what was seen."""


@dataclass(frozen=True)
class Plan:
    """How much work each scenario does."""

    repeats: int
    overhead_jobs: int  # per run of the naive consumer and of the worker at concurrency 8
    overhead_jobs_c1: int  # per run of the worker at concurrency 1 (slower; the per-job figures are steady)
    warmup_jobs: int
    sweep_s: float  # aimed length of one throughput run at the ideal rate; sets the job count
    latency_requests: int
    large_mib: tuple[int, ...]
    idle_s: float


FULL = Plan(
    repeats=5,
    overhead_jobs=2000,
    overhead_jobs_c1=1000,
    warmup_jobs=50,
    sweep_s=2.5,
    latency_requests=200,
    large_mib=(1, 8, 24),
    idle_s=30.0,
)
QUICK = Plan(
    repeats=1,
    overhead_jobs=300,
    overhead_jobs_c1=150,
    warmup_jobs=20,
    sweep_s=1.0,
    latency_requests=50,
    large_mib=(1, 8, 24),
    idle_s=10.0,
)


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

    def emulator(self, *, latency_s: float, capacity: int) -> Emulator:
        argv = [sys.executable, "-m", "worker", "emulator", "--port", "0"]
        argv += ["--latency", str(latency_s), "--capacity", str(capacity)]
        child = self.spawn(f"emulator-{latency_s:g}s-x{capacity}", argv, _base_env())

        def listening() -> str | None:
            for line in child.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict) and event.get("event") == "emulator_listening":
                        return str(event["url"])
            return None

        url = self.bench.wait_for(listening, START_TIMEOUT_S, "the emulator's listening line", watch=[child])
        return Emulator(child=child, url=url)

    def worker(self, emulator: Emulator, queues: Queues, *, concurrency: int, queue_type: str = "quorum") -> Child:
        env = _base_env()
        env.update(
            {
                "EDGE_WORKER_AMQP__URL": self.bench.broker.url,
                "EDGE_WORKER_AMQP__QUEUE": queues.queue,
                "EDGE_WORKER_AMQP__REPLY_QUEUE": queues.reply,
                "EDGE_WORKER_AMQP__DEAD_LETTER_QUEUE": queues.dead,
                "EDGE_WORKER_EDGE__URL": emulator.url,
                "EDGE_WORKER_WORKER__CONCURRENCY": str(concurrency),
                "EDGE_WORKER_WORKER__STATE_DIR": str(self.bench.workdir / f"state-{uuid.uuid4().hex[:8]}"),
                "EDGE_WORKER_LOG__FORMAT": "json",
                "EDGE_WORKER_LOG__LEVEL": "warning",
                "EDGE_WORKER_AMQP__QUEUE_TYPE": queue_type,
            }
        )
        child = self.spawn(f"worker-c{concurrency}", [sys.executable, "-m", "worker", "run"], env)
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


# -- measurements ------------------------------------------------------------------------------------


def request_body(model: dict[str, str], payload: bytes) -> bytes:
    body: bytes = msgpack.packb({"model": model, "sources": {"job": {"input": payload}}}, use_bin_type=True)
    return body


@dataclass
class ThroughputRun:
    jobs: int
    seconds: float
    jobs_per_s: float
    cpu_ms_per_job: float
    emulator_cpu_ms_per_job: float
    calls_per_job: dict[str, float]
    statuses: dict[str, int]


class Bench:
    """Shared state of one benchmark invocation."""

    def __init__(self, plan: Plan, workdir: Path, broker: Broker) -> None:
        self.plan = plan
        self.workdir = workdir
        self.broker = broker

    def wait_for(self, predicate: Callable[[], Any], timeout_s: float, what: str, *, watch: Sequence[Child]) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            for child in watch:
                child.check(f"waiting for {what}")
            if time.monotonic() > deadline:
                raise BenchError(
                    f"timed out after {timeout_s:g} s waiting for {what}"
                    + "".join(f"\n{c.name} log tail:\n{c.tail()}" for c in watch)
                )
            self.broker.sleep(POLL_S)

    def warm_up(self, consumer: Child, emulator: Emulator, queues: Queues, sink: ReplySink, jobs: int) -> None:
        """Jobs that are not measured: connections, caches and the duration estimate settle first."""
        publisher = Publisher(self.broker, queues.queue, queues.reply, confirm=True)
        try:
            body = request_body(MODEL, os.urandom(1024))
            sink.expect([publisher.publish(body) for _ in range(jobs)])
            sink.wait(watch=[consumer, emulator.child], doing=f"warming up {consumer.name}")
        finally:
            publisher.close()

    def throughput(
        self, consumer: Child, emulator: Emulator, queues: Queues, sink: ReplySink, jobs: int
    ) -> ThroughputRun:
        """Publish `jobs` 1 KiB requests while the consumer is paused; time it from resume to the last reply."""
        body = request_body(MODEL, os.urandom(1024))
        publisher = Publisher(self.broker, queues.queue, queues.reply, confirm=True)
        emulator.reset()
        consumer.pause()
        try:
            ids = [publisher.publish(body) for _ in range(jobs)]
            sink.expect(ids)
            cpu0 = consumer.cpu_s()
            emulator_cpu0 = emulator.child.cpu_s()
            started = time.perf_counter()
        finally:
            consumer.resume()
            publisher.close()
        sink.wait(watch=[consumer, emulator.child], doing=f"{consumer.name} ran {jobs} jobs")
        cpu = consumer.cpu_s() - cpu0
        emulator_cpu = emulator.child.cpu_s() - emulator_cpu0
        seconds = max(sink.arrivals.values()) - started
        stats = emulator.stats()
        statuses: dict[str, int] = {}
        for reply in sink.replies.values():
            statuses[str(reply.get("status"))] = statuses.get(str(reply.get("status")), 0) + 1
        calls = {name: count / jobs for name, count in stats["calls"].items() if count}
        return ThroughputRun(
            jobs=jobs,
            seconds=seconds,
            jobs_per_s=jobs / seconds,
            cpu_ms_per_job=1000 * cpu / jobs,
            emulator_cpu_ms_per_job=1000 * emulator_cpu / jobs,
            calls_per_job=calls,
            statuses=statuses,
        )


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(runs: list[ThroughputRun]) -> dict[str, Any]:
    return {
        "jobs_per_s": median([r.jobs_per_s for r in runs]),
        "cpu_ms_per_job": median([r.cpu_ms_per_job for r in runs]),
        "emulator_cpu_ms_per_job": median([r.emulator_cpu_ms_per_job for r in runs]),
        "calls_per_job": runs[-1].calls_per_job if runs else {},
        "runs": [asdict(r) for r in runs],
    }


def _check_complete(runs: list[ThroughputRun], what: str) -> None:
    for run in runs:
        bad = {s: n for s, n in run.statuses.items() if s != "COMPLETE"}
        if bad:
            raise BenchError(f"{what}: replies that are not COMPLETE: {bad}")


# -- scenarios ---------------------------------------------------------------------------------------


def scenario_overhead(bench: Bench) -> dict[str, Any]:
    """Zero-latency edge, 1 KiB inputs: the worker's own cost per job against the naive consumer's."""
    plan = bench.plan
    out: dict[str, Any] = {"jobs": plan.overhead_jobs, "jobs_c1": plan.overhead_jobs_c1}
    with Scope(bench, "overhead") as scope:
        emulator = scope.emulator(latency_s=0.0, capacity=0)
        queues = scope.queues()
        for label, concurrency in (("worker_c8", DEFAULT_CONCURRENCY), ("worker_c1", 1), ("naive", 0)):
            consumer = (
                scope.worker(emulator, queues, concurrency=concurrency)
                if concurrency
                else scope.naive(emulator, queues)
            )
            sink = ReplySink(bench.broker, queues.reply)
            try:
                bench.warm_up(consumer, emulator, queues, sink, plan.warmup_jobs)
                runs = []
                for _ in range(plan.repeats):
                    jobs = plan.overhead_jobs_c1 if concurrency == 1 else plan.overhead_jobs
                    runs.append(bench.throughput(consumer, emulator, queues, sink, jobs))
                    _progress(
                        f"overhead {label}: {runs[-1].jobs_per_s:.0f} jobs/s, {runs[-1].cpu_ms_per_job:.2f} ms/job"
                    )
                _check_complete(runs, f"overhead {label}")
                out[label] = summarize(runs)
                out[label]["rss_mib"] = consumer.status_kib("VmRSS") / 1024
                out[label]["peak_rss_mib"] = consumer.status_kib("VmHWM") / 1024
            finally:
                sink.close()
                scope.stop(consumer)
    return out


def _sweep_jobs(bench: Bench, ideal_per_s: float) -> int:
    return max(40, round(ideal_per_s * bench.plan.sweep_s))


def scenario_concurrency(bench: Bench) -> dict[str, Any]:
    """Realistic edge (8 slots x 50 ms): jobs/s for each worker concurrency; the realistic figure is c = 8.

    One worker per concurrency, each on queues of its own, all started first; the runs then go round the
    concurrencies, repeat after repeat, so that a slow spell of the machine (seen here: whole runs 20 %
    slower) falls on every concurrency alike instead of on the one measured at the time.
    """
    latency_s, capacity = REALISTIC
    out: dict[str, Any] = {"ideal_per_s": capacity / latency_s, "by_concurrency": {}}
    with Scope(bench, "concurrency") as scope:
        emulator = scope.emulator(latency_s=latency_s, capacity=capacity)
        rigs: list[tuple[int, Child, Queues, ReplySink]] = []
        try:
            for concurrency in CONCURRENCIES:
                queues = scope.queues()
                worker = scope.worker(emulator, queues, concurrency=concurrency)
                sink = ReplySink(bench.broker, queues.reply)
                rigs.append((concurrency, worker, queues, sink))
                bench.warm_up(worker, emulator, queues, sink, 2 * concurrency)
            runs: dict[int, list[ThroughputRun]] = {c: [] for c in CONCURRENCIES}
            for _ in range(bench.plan.repeats):
                for concurrency, worker, queues, sink in rigs:
                    ideal = min(concurrency, capacity) / latency_s
                    run = bench.throughput(worker, emulator, queues, sink, _sweep_jobs(bench, ideal))
                    runs[concurrency].append(run)
                    _progress(f"concurrency {concurrency}: {run.jobs_per_s:.1f} jobs/s (ideal {ideal:g})")
            for concurrency in CONCURRENCIES:
                _check_complete(runs[concurrency], f"concurrency {concurrency}")
                summary = summarize(runs[concurrency])
                summary["ideal_per_s"] = min(concurrency, capacity) / latency_s
                summary["share_of_edge_ideal"] = summary["jobs_per_s"] / out["ideal_per_s"]
                out["by_concurrency"][str(concurrency)] = summary
        finally:
            for _, worker, _, sink in rigs:
                sink.close()
                scope.stop(worker)
    return out


def scenario_saturation(bench: Bench) -> dict[str, Any]:
    """A slow edge (4 slots x 100 ms) with the default concurrency: share of the ideal 40 jobs/s."""
    latency_s, capacity = SATURATION
    ideal = capacity / latency_s
    with Scope(bench, "saturation") as scope:
        emulator = scope.emulator(latency_s=latency_s, capacity=capacity)
        queues = scope.queues()
        worker = scope.worker(emulator, queues, concurrency=DEFAULT_CONCURRENCY)
        sink = ReplySink(bench.broker, queues.reply)
        try:
            bench.warm_up(worker, emulator, queues, sink, 2 * capacity)
            runs = []
            for _ in range(bench.plan.repeats):
                runs.append(bench.throughput(worker, emulator, queues, sink, _sweep_jobs(bench, ideal)))
                _progress(f"saturation: {runs[-1].jobs_per_s:.1f} jobs/s (ideal {ideal:g})")
            _check_complete(runs, "saturation")
        finally:
            sink.close()
    summary = summarize(runs)
    summary["ideal_per_s"] = ideal
    summary["share"] = summary["jobs_per_s"] / ideal
    return summary


def scenario_latency(bench: Bench) -> dict[str, Any]:
    """One request at a time on a 50 ms edge: the time added on top of the 50 ms, publish to reply.

    Measured with the default quorum queues and with classic ones, runs alternating between the two (one
    worker each, on one emulator): the difference is the broker's (a quorum queue delivers a message only
    once its log entry is committed, and confirms a publish likewise), not the worker's.
    """
    job_s = 0.05
    kinds = ("quorum", "classic")
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    calls: dict[str, dict[str, int]] = {}
    with Scope(bench, "latency") as scope:
        emulator = scope.emulator(latency_s=job_s, capacity=1)
        rigs: list[tuple[str, Child, ReplySink, Publisher]] = []
        try:
            for kind in kinds:
                queues = scope.queues()
                worker = scope.worker(emulator, queues, concurrency=DEFAULT_CONCURRENCY, queue_type=kind)
                rigs.append(
                    (
                        kind,
                        worker,
                        ReplySink(bench.broker, queues.reply),
                        Publisher(bench.broker, queues.queue, queues.reply, confirm=False),
                    )
                )
            body = request_body(MODEL, os.urandom(1024))

            def one(worker: Child, sink: ReplySink, publisher: Publisher) -> float:
                started = time.perf_counter()
                message_id = publisher.publish(body)
                sink.expect([message_id])
                sink.wait(watch=[worker, emulator.child], doing="waiting for one reply")
                return (sink.arrivals[message_id] - started - job_s) * 1000

            for _, worker, sink, publisher in rigs:
                for _ in range(10):  # warm-up: connections and the duration estimate
                    one(worker, sink, publisher)
            for _ in range(bench.plan.repeats):
                for kind, worker, sink, publisher in rigs:
                    emulator.reset()
                    added = [one(worker, sink, publisher) for _ in range(bench.plan.latency_requests)]
                    calls[kind] = emulator.stats()["calls"]
                    runs[kind].append(
                        {
                            "median_ms": median(added),
                            "p90_ms": percentile(added, 90),
                            "min_ms": min(added),
                            "max_ms": max(added),
                        }
                    )
                    _progress(
                        f"latency ({kind} queues): median +{runs[kind][-1]['median_ms']:.2f} ms, "
                        f"p90 +{runs[kind][-1]['p90_ms']:.2f} ms"
                    )
        finally:
            for _, worker, sink, publisher in rigs:
                publisher.close()
                sink.close()
                scope.stop(worker)

    def summary(kind: str) -> dict[str, Any]:
        jobs = max(1, calls[kind].get("submit", 0))
        return {
            "job_s": job_s,
            "queue_type": kind,
            "requests_per_run": bench.plan.latency_requests,
            "median_ms": median([r["median_ms"] for r in runs[kind]]),
            "p90_ms": median([r["p90_ms"] for r in runs[kind]]),
            "status_calls_per_job": calls[kind].get("status", 0) / jobs,
            "results_calls_per_job": calls[kind].get("results", 0) / jobs,
            "runs": runs[kind],
        }

    out = summary("quorum")
    out["classic"] = summary("classic")
    return out


def scenario_large(bench: Bench) -> dict[str, Any]:
    """One large request per fresh worker: seconds end to end, peak RSS, and the bytes verified at the edge."""
    out: dict[str, Any] = {}
    with Scope(bench, "large") as scope:
        emulator = scope.emulator(latency_s=0.0, capacity=0)  # its default 4 MiB request limit stays
        queues = scope.queues()
        for size_mib in bench.plan.large_mib:
            payload = os.urandom(size_mib * MIB)
            digest = hashlib.sha256(payload).hexdigest()
            body = request_body(HASH_MODEL, payload)
            runs: list[dict[str, Any]] = []
            for _ in range(bench.plan.repeats):
                worker = scope.worker(emulator, queues, concurrency=DEFAULT_CONCURRENCY)
                sink = ReplySink(bench.broker, queues.reply)
                publisher = Publisher(bench.broker, queues.queue, queues.reply, confirm=True)
                try:
                    emulator.reset()
                    rss_before = worker.status_kib("VmRSS") / 1024
                    started = time.perf_counter()
                    message_id = publisher.publish(body)
                    sink.expect([message_id])
                    sink.wait(watch=[worker, emulator.child], doing=f"a {size_mib} MiB request", stall_s=120)
                    seconds = sink.arrivals[message_id] - started
                    peak = worker.status_kib("VmHWM") / 1024
                    reply = sink.replies[message_id]
                    seen = (reply.get("results") or {}).get("job", {}).get("inputs", {}).get("input", {})
                    calls = emulator.stats()["calls"]
                finally:
                    publisher.close()
                    sink.close()
                    scope.stop(worker)
                intact = reply.get("status") == "COMPLETE" and seen.get("sha256") == digest
                intact = intact and seen.get("size") == len(payload)
                runs.append(
                    {
                        "seconds": seconds,
                        "rss_before_mib": rss_before,
                        "peak_rss_mib": peak,
                        "intact": intact,
                        "status": reply.get("status"),
                        "chunks": calls.get("chunk", 0),
                        "embedded": calls.get("chunk", 0) == 0,
                    }
                )
                _progress(
                    f"large {size_mib} MiB: {seconds:.2f} s, peak RSS {peak:.0f} MiB, intact={intact}, "
                    f"chunks={calls.get('chunk', 0)}"
                )
            peak = median([r["peak_rss_mib"] for r in runs])
            out[str(size_mib)] = {
                "payload_mib": size_mib,
                "seconds": median([r["seconds"] for r in runs]),
                "peak_rss_mib": peak,
                "peak_rss_x_payload": peak / size_mib,
                "rss_before_mib": median([r["rss_before_mib"] for r in runs]),
                "growth_x_payload": median([(r["peak_rss_mib"] - r["rss_before_mib"]) / size_mib for r in runs]),
                "bound_mib": 2 * size_mib + LARGE_BOUND_EXTRA_MIB,
                "intact": all(r["intact"] for r in runs),
                "chunks": runs[-1]["chunks"],
                "runs": runs,
            }
    return out


def scenario_idle(bench: Bench) -> dict[str, Any]:
    """A worker with nothing to do: CPU share of one core and RSS, over idle_s seconds in three windows."""
    with Scope(bench, "idle") as scope:
        emulator = scope.emulator(latency_s=REALISTIC[0], capacity=REALISTIC[1])
        queues = scope.queues()
        worker = scope.worker(emulator, queues, concurrency=DEFAULT_CONCURRENCY)
        bench.broker.sleep(2.0)  # start-up work (imports, connection set-up) settles first
        windows: list[float] = []
        total_cpu0, ticks0 = worker.cpu_s_fine(), worker.cpu_s()
        total_started = time.monotonic()
        for _ in range(3):
            cpu0, started = worker.cpu_s_fine(), time.monotonic()
            bench.broker.sleep(bench.plan.idle_s / 3)
            worker.check("idling")
            windows.append(100 * (worker.cpu_s_fine() - cpu0) / (time.monotonic() - started))
        elapsed = time.monotonic() - total_started
        total = 100 * (worker.cpu_s_fine() - total_cpu0) / elapsed
        total_ticks = 100 * (worker.cpu_s() - ticks0) / elapsed
        rss = worker.status_kib("VmRSS") / 1024
        hwm = worker.status_kib("VmHWM") / 1024
        threads = int(Path(f"/proc/{worker.pid}/status").read_text().split("Threads:")[1].split()[0])
    return {
        "seconds": bench.plan.idle_s,
        "cpu_pct": total,
        "cpu_pct_windows": windows,
        "cpu_pct_from_ticks": total_ticks,
        "rss_mib": rss,
        "peak_rss_mib": hwm,
        "threads": threads,
    }


SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "overhead": scenario_overhead,
    "concurrency": scenario_concurrency,
    "saturation": scenario_saturation,
    "latency": scenario_latency,
    "large": scenario_large,
    "idle": scenario_idle,
}


# -- the report --------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    wanted: str
    measured: str
    passed: bool | None  # None: not measured (its scenario failed)


@dataclass
class Row:
    scenario: str
    measure: str
    worker: str
    reference: str = ""
    ratio: str = ""


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def build_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    s = results["scenarios"]
    over = s.get("overhead", {})
    if "worker_c8" in over and "naive" in over:
        naive = over["naive"]
        for label, name in (("worker_c8", "edge-worker, concurrency 8"), ("worker_c1", "edge-worker, concurrency 1")):
            mine = over.get(label)
            if not mine:
                continue
            rows.append(
                Row(
                    "overhead",
                    f"jobs/s ({name})",
                    f"{mine['jobs_per_s']:.0f}",
                    f"naive {naive['jobs_per_s']:.0f}",
                    f"{mine['jobs_per_s'] / naive['jobs_per_s']:.2f}x",
                )
            )
            rows.append(
                Row(
                    "overhead",
                    f"CPU ms/job ({name})",
                    f"{mine['cpu_ms_per_job']:.2f}",
                    f"naive {naive['cpu_ms_per_job']:.2f}",
                    f"{mine['cpu_ms_per_job'] / naive['cpu_ms_per_job']:.2f}x",
                )
            )
        mine = over["worker_c8"]
        rows.append(
            Row(
                "overhead",
                "edge HTTP calls/job (c 8)",
                _calls(mine["calls_per_job"]),
                f"naive {_calls(naive['calls_per_job'])}",
            )
        )
        rows.append(
            Row(
                "overhead",
                "emulator CPU ms/job (c 8)",
                f"{mine['emulator_cpu_ms_per_job']:.2f}",
                f"naive {naive['emulator_cpu_ms_per_job']:.2f}",
            )
        )
    conc = _get(s, "concurrency", "by_concurrency") or {}
    for c, entry in conc.items():
        rows.append(
            Row(
                "realistic 8x50ms",
                f"jobs/s at concurrency {c}",
                f"{entry['jobs_per_s']:.1f}",
                f"ideal {entry['ideal_per_s']:g}",
                f"{entry['jobs_per_s'] / entry['ideal_per_s']:.3f}",
            )
        )
    sat = s.get("saturation", {})
    if "share" in sat:
        rows.append(
            Row(
                "saturation 4x100ms",
                "jobs/s (concurrency 8)",
                f"{sat['jobs_per_s']:.1f}",
                f"ideal {sat['ideal_per_s']:g}",
                f"{sat['share']:.3f}",
            )
        )
    lat = s.get("latency", {})
    if "median_ms" in lat:
        rows.append(Row("latency 1x50ms", "added ms, median", f"{lat['median_ms']:.2f}"))
        rows.append(Row("latency 1x50ms", "added ms, p90", f"{lat['p90_ms']:.2f}"))
        rows.append(
            Row(
                "latency 1x50ms",
                "edge calls/job after submit (last run)",
                f"results {lat.get('results_calls_per_job', 0):.3f}, status {lat['status_calls_per_job']:.3f}",
            )
        )
        classic = lat.get("classic")
        if classic:
            rows.append(
                Row(
                    "latency 1x50ms",
                    "added ms, median / p90, classic queues",
                    f"{classic['median_ms']:.2f} / {classic['p90_ms']:.2f}",
                    "the broker's share: quorum minus classic",
                    f"{lat['median_ms'] - classic['median_ms']:+.2f} ms",
                )
            )
    for size, entry in (s.get("large") or {}).items():
        if not isinstance(entry, dict) or "seconds" not in entry:
            continue
        how = "embedded" if entry["chunks"] == 0 else f"{entry['chunks']} chunks"
        rows.append(
            Row(
                f"large {size} MiB",
                f"s end to end; peak RSS MiB ({how})",
                f"{entry['seconds']:.2f} s; {entry['peak_rss_mib']:.0f} MiB (max {_max_peak(entry):.0f})",
                f"bound {entry['bound_mib']:.0f} MiB",
                f"{entry['peak_rss_x_payload']:.1f}x payload ({entry['growth_x_payload']:.1f}x above idle)",
            )
        )
    idle = s.get("idle", {})
    if "cpu_pct" in idle:
        rows.append(Row("idle", f"CPU % of a core over {idle['seconds']:g} s", f"{idle['cpu_pct']:.4f}"))
        rows.append(Row("idle", "RSS MiB", f"{idle['rss_mib']:.1f}", f"peak {idle['peak_rss_mib']:.1f}"))
    return rows


def _max_peak(entry: dict[str, Any]) -> float:
    return float(max((r["peak_rss_mib"] for r in entry.get("runs", [])), default=entry["peak_rss_mib"]))


def _calls(calls: dict[str, float]) -> str:
    total = sum(calls.values())
    parts = ", ".join(f"{name} {n:.2f}" for name, n in sorted(calls.items()))
    return f"{total:.2f} ({parts})"


def build_targets(results: dict[str, Any]) -> list[Target]:
    s = results["scenarios"]
    over = s.get("overhead", {})
    worker, naive = over.get("worker_c8"), over.get("naive")
    speedup = worker["jobs_per_s"] / naive["jobs_per_s"] if worker and naive else None
    cpu_ratio = worker["cpu_ms_per_job"] / naive["cpu_ms_per_job"] if worker and naive else None
    realistic = _get(s, "concurrency", "by_concurrency", str(DEFAULT_CONCURRENCY), "share_of_edge_ideal")
    saturation = _get(s, "saturation", "share")
    latency = _get(s, "latency", "median_ms")
    idle_cpu, idle_rss = _get(s, "idle", "cpu_pct"), _get(s, "idle", "rss_mib")
    checks: list[tuple[str, str, Any, str, str, float, str]] = [
        # scenario, target, measured value, its format, comparison, bound, the target as written
        ("overhead", "overhead: jobs/s vs naive", speedup, "{:.2f}x", ">=", TARGET_SPEEDUP, ">= 1.5x"),
        ("overhead", "overhead: CPU ms/job vs naive", cpu_ratio, "{:.2f}x", "<=", TARGET_CPU_RATIO, "<= 0.8x"),
        ("concurrency", "realistic (8x50ms, concurrency 8)", realistic, "{:.3f}", ">=", TARGET_REALISTIC, ">= 0.90"),
        ("saturation", "saturation (4x100ms, concurrency 8)", saturation, "{:.3f}", ">=", TARGET_SATURATION, ">= 0.95"),
        ("latency", "latency: median added", latency, "{:.2f} ms", "<=", TARGET_LATENCY_MS, "<= 6 ms"),
        ("idle", "idle: CPU", idle_cpu, "{:.4f}% of a core", "<", TARGET_IDLE_CPU_PCT, "< 0.5% of a core"),
        ("idle", "idle: RSS", idle_rss, "{:.1f} MiB", "<", TARGET_IDLE_RSS_MIB, "< 60 MiB"),
    ]
    targets: list[Target] = []
    for scenario, name, value, fmt, op, bound, wanted in checks:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            targets.append(Target(name, wanted, _not_measured(results, scenario), None))
        else:
            passed = {">=": value >= bound, "<=": value <= bound, "<": value < bound}[op]
            targets.append(Target(name, wanted, fmt.format(value), passed))
    big = max((int(k) for k in (s.get("large") or {}) if k.isdigit()), default=max(results["plan"]["large_mib"]))
    large = _get(s, "large", str(big))
    name = f"large: {big} MiB intact, peak RSS <= 2x payload + 60 MiB"
    if large:
        measured = f"{'intact' if large['intact'] else 'NOT intact'}, {large['peak_rss_mib']:.0f} MiB"
        passed = large["intact"] and large["peak_rss_mib"] <= large["bound_mib"]
        targets.insert(5, Target(name, f"intact, <= {large['bound_mib']:.0f} MiB", measured, passed))
    else:
        targets.insert(5, Target(name, "", _not_measured(results, "large"), None))
    return targets


def _not_measured(results: dict[str, Any], scenario: str) -> str:
    return "scenario failed" if "error" in results["scenarios"].get(scenario, {}) else "not measured"


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "-"}[passed]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


ROW_HEADERS = ("scenario", "measure", "edge-worker", "reference", "ratio")
TARGET_HEADERS = ("target", "wanted", "measured", "result")


def _row_cells(rows: list[Row]) -> list[list[str]]:
    return [[r.scenario, r.measure, r.worker, r.reference, r.ratio] for r in rows]


def _target_cells(targets: list[Target]) -> list[list[str]]:
    return [[t.name, t.wanted, t.measured, _verdict(t.passed)] for t in targets]


def plot_throughput(results: dict[str, Any], path: Path) -> bool:
    conc = _get(results, "scenarios", "concurrency", "by_concurrency") or {}
    if not conc:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(int(c) for c in conc)
    ys = [conc[str(c)]["jobs_per_s"] for c in xs]
    lows = [min(r["jobs_per_s"] for r in conc[str(c)]["runs"]) for c in xs]
    highs = [max(r["jobs_per_s"] for r in conc[str(c)]["runs"]) for c in xs]
    latency_s, capacity = REALISTIC
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ideal_x = [1, 2, 4, 8, 16]
    ax.plot(
        ideal_x, [min(c, capacity) / latency_s for c in ideal_x], "--", color="grey", label="ideal: min(c, 8) / 50 ms"
    )
    ax.axhline(TARGET_REALISTIC * capacity / latency_s, color="tab:red", lw=0.8, ls=":", label="target 0.90 x 160/s")
    ax.errorbar(
        xs,
        ys,
        yerr=[[y - lo for y, lo in zip(ys, lows, strict=True)], [hi - y for y, hi in zip(ys, highs, strict=True)]],
        fmt="o-",
        color="tab:blue",
        capsize=3,
        label="edge-worker (median, min-max)",
    )
    for x, y in zip(xs, ys, strict=True):
        ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(6, -12), ha="left", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("worker concurrency (worker.concurrency)")
    ax.set_ylabel("jobs/s")
    ax.set_ylim(0, capacity / latency_s * 1.15)
    ax.set_title("Throughput against concurrency, emulated edge with 8 slots x 50 ms")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def machine_description(broker: Broker) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    try:
        rabbit = broker.server_version()
    except (pika.exceptions.AMQPError, OSError):
        rabbit = "unknown"
    return {
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "rabbitmq": rabbit,
        "packages": _versions("pika", "requests", "msgpack", "structlog"),
    }


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def _versions(*names: str) -> dict[str, str]:
    from importlib import metadata

    out: dict[str, str] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip()

    dirty = [line.split(maxsplit=1)[1] for line in git("status", "--porcelain", "worker").splitlines() if line.strip()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "worker_dirty": bool(dirty), "worker_uncommitted": dirty}


def _best_concurrency_note(results: dict[str, Any]) -> list[str]:
    conc = _get(results, "scenarios", "concurrency", "by_concurrency") or {}
    if not conc:
        return []
    best = max(conc, key=lambda c: conc[c]["jobs_per_s"])
    entry = conc[best]
    return [
        f"Realistic, best concurrency measured: {best}, at {entry['jobs_per_s']:.1f} jobs/s = "
        f"{entry['share_of_edge_ideal']:.3f} of 160/s (the target above is for the default, 8).",
        "",
    ]


def write_report(results: dict[str, Any], out_dir: Path, plotted: bool) -> Path:
    m = results["machine"]
    g = results["git"]
    rows = build_rows(results)
    targets = build_targets(results)
    failures = {name: s["error"] for name, s in results["scenarios"].items() if "error" in s}
    passed = sum(1 for t in targets if t.passed)
    lines = [
        "# edge-worker benchmark (issue 4)",
        "",
        f"Run on {results['started_at']} with `{results['command']}` in {results['runtime_s']:.0f} s, "
        f"at commit `{g['commit']}`"
        + (f" with uncommitted changes in {', '.join(g['worker_uncommitted'])}." if g["worker_dirty"] else "."),
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['cores']} cores; RAM {m['ram_gib']} GiB; Linux {m['kernel']}",
        f"- Python {m['python']}; RabbitMQ {m['rabbitmq']} on 127.0.0.1; "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
        "- The broker, the emulator, the consumer under test and the benchmark itself share these cores; load "
        f"average (1, 5, 15 min) {results['loadavg_start']} at the start and {results['loadavg_end']} at the end "
        "(other work on the machine shows up here).",
        "",
        f"## Targets: {passed} of {len(targets)} pass",
        "",
        markdown_table(TARGET_HEADERS, _target_cells(targets)),
        "",
        *_best_concurrency_note(results),
        "## Results",
        "",
        f"Medians of {results['plan']['repeats']} runs each; every ratio compares figures from this same run.",
        "",
        markdown_table(ROW_HEADERS, _row_cells(rows)),
        "",
    ]
    if plotted:
        lines += ["## Throughput against concurrency", "", "![throughput against concurrency](throughput.png)", ""]
    if failures:
        lines += ["## Scenarios that failed", ""]
        for name, error in failures.items():
            lines += [f"### {name}", "", "```", error, "```", ""]
    lines += [
        "## Method",
        "",
        "- Every process is separate: the benchmark (publisher and reply consumer on one pika connection), the "
        "emulator (`python -m worker emulator`), and the consumer under test (`python -m worker run` configured "
        "by `EDGE_WORKER_*` variables with log level warning and JSON format, or `python -m bench.naive_consumer`).",
        "- Throughput runs: the consumer is paused with SIGSTOP, all requests (msgpack, one 1 KiB bin input, "
        "persistent, message_id = correlation_id, reply_to) are published with confirms, then the consumer is "
        "resumed; the window runs from SIGCONT to the arrival of the last final reply. CPU ms/job is the "
        "consumer's utime + stime (/proc/<pid>/stat) over that window divided by the jobs. Each consumer first "
        "runs unmeasured warm-up jobs.",
        f"- overhead: emulator with no latency and unlimited slots, {results['plan']['overhead_jobs']} jobs a run "
        f"({results['plan']['overhead_jobs_c1']} at concurrency 1). "
        "The naive baseline (bench/naive_consumer.py) consumes with prefetch 1, builds data URIs, `requests.post`s "
        "without a session, polls every 10 ms, fetches results, publishes on a confirming BlockingChannel, acks.",
        "- realistic / concurrency: emulator with 8 slots x 50 ms (ideal 160 jobs/s); one worker per "
        "concurrency, each on its own queues, all started first, the runs going round the concurrencies repeat "
        "after repeat (a slow spell of the machine falls on all alike); jobs per run = ideal rate x "
        f"{results['plan']['sweep_s']:g} s (at least 40). saturation: 4 slots x 100 ms, concurrency 8.",
        f"- latency: {results['plan']['latency_requests']} sequential requests a run on a 1-slot 50 ms emulator, "
        "after 10 warm-up requests; added = publish-to-reply time minus 50 ms. One worker on quorum queues and "
        "one on classic queues, their runs alternating.",
        "- large: a fresh worker per request (so VmHWM belongs to that one request), model sha256:1.0.0, the "
        "emulator at its default 4 MiB request limit (larger inputs must go chunked); the sha256 and size the "
        "edge saw are checked against the payload. Seconds run from publish to reply.",
        "- idle: a fresh worker, 2 s after it starts consuming; CPU over the idle period from the threads' "
        "schedstat (nanoseconds; /proc/<pid>/stat counts 10 ms ticks, too coarse here).",
        "",
        "Raw numbers: [results.json](results.json).",
        "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


# -- main --------------------------------------------------------------------------------------------


def render(results_path: Path) -> int:
    """Write report.md and throughput.png next to an existing results.json, without measuring anything."""
    results = json.loads(results_path.read_text())
    out_dir = results_path.parent
    report = write_report(results, out_dir, plot_throughput(results, out_dir / "throughput.png"))
    print(f"report: {report}")
    return 0


def _progress(message: str) -> None:
    print(f"  {message}", flush=True)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through every Scope, which stops its processes and deletes its queues


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description="The edge-worker benchmark (issue 4).")
    parser.add_argument("--quick", action="store_true", help="fewer jobs and one run each (a smoke run)")
    parser.add_argument("--only", metavar="NAMES", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, help="where results go (default bench/results, or .../quick, .../partial)")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON", help="only redo the report and plot from a run")
    args = parser.parse_args(argv)
    if args.render:
        return render(args.render)
    names = list(SCENARIOS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    plan = QUICK if args.quick else FULL
    out_dir: Path = args.out or (
        RESULTS_DIR / "quick" if args.quick else RESULTS_DIR / "partial" if args.only else RESULTS_DIR
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.run" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")

    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="edge-worker-bench-"))
    broker = Broker(BROKER_URL)
    started_wall = time.monotonic()
    results: dict[str, Any] = {
        "command": command,
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "plan": asdict(plan),
        "git": git_state(),
        "loadavg_start": _loadavg(),
        "scenarios": {},
    }
    keep_workdir = False
    try:
        try:
            broker.server_version()  # connects: without a broker there is nothing to measure
            results["machine"] = machine_description(broker)
        except (pika.exceptions.AMQPError, OSError) as exc:
            print(f"bench: RabbitMQ is not reachable at {BROKER_URL}: {exc!r}", file=sys.stderr)
            return 69
        print(f"bench: {command}; logs in {workdir}", flush=True)
        bench = Bench(plan, workdir, broker)
        for name in names:
            print(f"[{name}]", flush=True)
            began = time.monotonic()
            try:
                results["scenarios"][name] = SCENARIOS[name](bench)
            except Exception as exc:  # noqa: BLE001 -- a failed scenario is reported, and the others still run
                keep_workdir = True
                message = f"{type(exc).__name__}: {exc}"
                print(f"  FAILED: {message}", flush=True)
                results["scenarios"][name] = {"error": message}
            results["scenarios"][name]["scenario_seconds"] = round(time.monotonic() - began, 1)
    finally:
        broker.close()
        if not keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["runtime_s"] = time.monotonic() - started_wall
    results["loadavg_end"] = _loadavg()

    plotted = plot_throughput(results, out_dir / "throughput.png")
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    report = write_report(results, out_dir, plotted)
    targets = build_targets(results)
    print()
    print(format_table(ROW_HEADERS, _row_cells(build_rows(results))))
    print()
    print(format_table(TARGET_HEADERS, _target_cells(targets)))
    for line in _best_concurrency_note(results):
        print(line)
    shown = report.relative_to(REPO) if report.is_relative_to(REPO) else report
    print(f"\nreport: {shown}; runtime {results['runtime_s']:.0f} s")
    if keep_workdir:
        print(f"logs of the failed scenarios kept in {workdir}")
    # Targets are reported, not enforced: the exit status says whether every scenario could be measured.
    return 1 if any("error" in s for s in results["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
