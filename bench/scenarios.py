"""The scenarios: what each measures, with the throughput runs of measure.py, and the SCENARIOS table."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.measure import (
    Bench,
    ThroughputRun,
    _check_complete,
    _progress,
    median,
    percentile,
    request_body,
    summarize,
)
from bench.plan import (
    CONCURRENCIES,
    DEFAULT_CONCURRENCY,
    HASH_MODEL,
    LARGE_BOUND_EXTRA_MIB,
    MIB,
    MODEL,
    REALISTIC,
    SATURATION,
)
from bench.procs import (
    Child,
    Publisher,
    Queues,
    ReplySink,
    Scope,
)

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
