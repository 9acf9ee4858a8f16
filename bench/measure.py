"""Measurement: one throughput run (pause, publish, resume, time to the last reply), the Bench that runs
them, and the statistics over runs."""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack

from bench.plan import (
    MODEL,
    POLL_S,
    BenchError,
    Plan,
)
from bench.procs import (
    Broker,
    Child,
    Emulator,
    Publisher,
    Queues,
    ReplySink,
)


def _progress(message: str) -> None:
    print(f"  {message}", flush=True)


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
