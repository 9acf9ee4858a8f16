"""The scenarios: what each measures, with the throughput runs of measure.py, and the SCENARIOS table."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.floor import EdgeDirect, grpc_unavailable
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
    DEFAULT_LOOKAHEAD,
    GRPC_CONCURRENCIES,
    HASH_MODEL,
    LARGE_BOUND_EXTRA_MIB,
    LOOKAHEADS,
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
    """Zero-latency edge, 1 KiB inputs: the worker's own cost per job against the naive consumer's.

    The worker at concurrency 8 and 1 over HTTP, at 8 over gRPC when the worker speaks it, and the naive
    consumer, one after the other on one emulator.
    """
    plan = bench.plan
    grpc_missing = grpc_unavailable()
    out: dict[str, Any] = {"jobs": plan.overhead_jobs, "jobs_c1": plan.overhead_jobs_c1}
    consumers: list[tuple[str, int, bool]] = [("worker_c8", DEFAULT_CONCURRENCY, False), ("worker_c1", 1, False)]
    if grpc_missing is None:
        consumers.append(("worker_c8_grpc", DEFAULT_CONCURRENCY, True))
    else:
        out["grpc"] = f"not available: {grpc_missing}"
    consumers.append(("naive", 0, False))
    with Scope(bench, "overhead") as scope:
        emulator = scope.emulator(latency_s=0.0, capacity=0, grpc=grpc_missing is None)
        queues = scope.queues()
        for label, concurrency, grpc in consumers:
            consumer = (
                scope.worker(emulator, queues, concurrency=concurrency, grpc=grpc)
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
    if grpc_missing is not None:
        _progress(f"grpc: not available ({grpc_missing})")
    return out


def _sweep_jobs(bench: Bench, ideal_per_s: float) -> int:
    return max(40, round(ideal_per_s * bench.plan.sweep_s))


def scenario_concurrency(bench: Bench) -> dict[str, Any]:
    """Realistic edge (8 slots x 50 ms): jobs/s for each concurrency and look-ahead; the realistic figures are
    the default look-ahead's at concurrency 8 and 16. Over gRPC too (default look-ahead), when available.

    One worker per (look-ahead, concurrency), each on queues of its own, all started first; the runs then go
    round them, repeat after repeat, so that a slow spell of the machine (seen here: whole runs 20 % slower)
    falls on every series alike instead of on the one measured at the time.
    """
    latency_s, capacity = REALISTIC
    grpc_missing = grpc_unavailable()
    out: dict[str, Any] = {
        "ideal_per_s": capacity / latency_s,
        "default_lookahead": DEFAULT_LOOKAHEAD,
        "by_lookahead": {},
    }
    series: list[tuple[str, int, int, bool]] = [
        (f"l{lookahead}", lookahead, c, False) for lookahead in LOOKAHEADS for c in CONCURRENCIES
    ]
    if grpc_missing is None:
        series += [("grpc", DEFAULT_LOOKAHEAD, c, True) for c in GRPC_CONCURRENCIES]
    else:
        out["grpc"] = f"not available: {grpc_missing}"
    with Scope(bench, "concurrency") as scope:
        emulator = scope.emulator(latency_s=latency_s, capacity=capacity, grpc=grpc_missing is None)
        rigs: list[tuple[tuple[str, int, int, bool], Child, Queues, ReplySink]] = []
        try:
            for key in series:
                _, lookahead, concurrency, grpc = key
                queues = scope.queues()
                worker = scope.worker(emulator, queues, concurrency=concurrency, lookahead=lookahead, grpc=grpc)
                sink = ReplySink(bench.broker, queues.reply)
                rigs.append((key, worker, queues, sink))
                bench.warm_up(worker, emulator, queues, sink, 2 * concurrency)
            runs: dict[tuple[str, int, int, bool], list[ThroughputRun]] = {key: [] for key in series}
            for _ in range(bench.plan.repeats):
                for key, worker, queues, sink in rigs:
                    name, lookahead, concurrency, _ = key
                    ideal = min(concurrency, capacity) / latency_s
                    run = bench.throughput(worker, emulator, queues, sink, _sweep_jobs(bench, ideal))
                    runs[key].append(run)
                    _progress(
                        f"{name} concurrency {concurrency} lookahead {lookahead}: {run.jobs_per_s:.1f} jobs/s "
                        f"(ideal {ideal:g})"
                    )
            for key in series:
                name, lookahead, concurrency, _ = key
                _check_complete(runs[key], f"{name} concurrency {concurrency}")
                summary = summarize(runs[key])
                summary["ideal_per_s"] = min(concurrency, capacity) / latency_s
                summary["share_of_edge_ideal"] = summary["jobs_per_s"] / out["ideal_per_s"]
                summary["lookahead"] = lookahead
                group = "grpc_by_concurrency" if name == "grpc" else None
                if group is None:
                    out["by_lookahead"].setdefault(str(lookahead), {})[str(concurrency)] = summary
                else:
                    out.setdefault(group, {})[str(concurrency)] = summary
        finally:
            for _, worker, _, sink in rigs:
                sink.close()
                scope.stop(worker)
    # The figures the targets read: the default look-ahead's series.
    out["by_concurrency"] = out["by_lookahead"].get(str(DEFAULT_LOOKAHEAD), {})
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


def _sample_stats(samples: list[float]) -> dict[str, float]:
    return {
        "median_ms": median(samples),
        "p90_ms": percentile(samples, 90),
        "min_ms": min(samples),
        "max_ms": max(samples),
    }


def scenario_latency(bench: Bench) -> dict[str, Any]:
    """One request at a time on a 50 ms edge: the time added on top of the 50 ms, publish to reply, and the
    floor under it, all measured in turn, repeat after repeat, in the same run.

    - the worker with the default quorum queues, with classic ones, and (when available) over gRPC;
    - the broker's share: `bench.floor echo`, a consumer that replies at once (confirmed publish, then ack)
      on quorum queues declared as the worker declares them: its publish-to-reply time;
    - the edge's share: the worker's two edge calls (submit, and results once the job has run) made from the
      benchmark by one client over one connection (HTTP, and gRPC when available): their wall time.

    The worker's own share = its added latency minus (broker's share + edge's share), taken per repeat.
    """
    job_s = 0.05
    grpc_missing = grpc_unavailable()
    kinds = ["quorum", "classic"] + (["grpc"] if grpc_missing is None else [])
    floors = ["broker", "edge_http"] + (["edge_grpc"] if grpc_missing is None else [])
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds + floors}
    calls: dict[str, dict[str, int]] = {}
    with Scope(bench, "latency") as scope:
        emulator = scope.emulator(latency_s=job_s, capacity=1, grpc=grpc_missing is None)
        body = request_body(MODEL, payload := os.urandom(1024))
        rigs: list[tuple[str, Child, ReplySink, Publisher]] = []
        direct = EdgeDirect(emulator.url, emulator.grpc_target)
        try:
            for kind in [*kinds, "broker"]:
                queues = scope.queues()
                if kind == "broker":
                    consumer = scope.echo(queues, queue_type="quorum")
                else:
                    consumer = scope.worker(
                        emulator,
                        queues,
                        concurrency=DEFAULT_CONCURRENCY,
                        queue_type="classic" if kind == "classic" else "quorum",
                        grpc=kind == "grpc",
                    )
                sink = ReplySink(bench.broker, queues.reply)
                rigs.append((kind, consumer, sink, Publisher(bench.broker, queues.queue, queues.reply, confirm=False)))

            def one(kind: str, consumer: Child, sink: ReplySink, publisher: Publisher) -> float:
                started = time.perf_counter()
                message_id = publisher.publish(body)
                sink.expect([message_id])
                sink.wait(watch=[consumer, emulator.child], doing="waiting for one reply")
                return (sink.arrivals[message_id] - started - (0.0 if kind == "broker" else job_s)) * 1000

            def edge(kind: str) -> float:
                call = direct.grpc_job if kind == "edge_grpc" else direct.http_job
                return call(MODEL, payload, job_s) * 1000

            for rig in rigs:
                for _ in range(10):  # warm-up: connections and the duration estimate
                    one(*rig)
            for kind in floors[1:]:
                for _ in range(10):
                    edge(kind)
            count = bench.plan.latency_requests
            for _ in range(bench.plan.repeats):
                for kind, consumer, sink, publisher in rigs:
                    emulator.reset()
                    runs[kind].append(_sample_stats([one(kind, consumer, sink, publisher) for _ in range(count)]))
                    if kind != "broker":
                        calls[kind] = emulator.stats()["calls"]
                    _progress(
                        f"latency ({kind}): median +{runs[kind][-1]['median_ms']:.2f} ms, "
                        f"p90 +{runs[kind][-1]['p90_ms']:.2f} ms"
                    )
                for kind in floors[1:]:
                    runs[kind].append(_sample_stats([edge(kind) for _ in range(count)]))
                    _progress(f"latency ({kind}, two calls): median {runs[kind][-1]['median_ms']:.2f} ms")
        finally:
            direct.close()
            for _, consumer, sink, publisher in rigs:
                publisher.close()
                sink.close()
                scope.stop(consumer)

    def summary(kind: str) -> dict[str, Any]:
        jobs = max(1, calls[kind].get("submit", 0))
        return {
            "job_s": job_s,
            "queue_type": "classic" if kind == "classic" else "quorum",
            "requests_per_run": bench.plan.latency_requests,
            "median_ms": median([r["median_ms"] for r in runs[kind]]),
            "p90_ms": median([r["p90_ms"] for r in runs[kind]]),
            "status_calls_per_job": calls[kind].get("status", 0) / jobs,
            "results_calls_per_job": calls[kind].get("results", 0) / jobs,
            "runs": runs[kind],
        }

    def own(kind: str, edge_kind: str) -> float:
        """Per repeat: the worker's median minus the broker's and the edge's medians; the median of those."""
        return median(
            [
                w["median_ms"] - b["median_ms"] - e["median_ms"]
                for w, b, e in zip(runs[kind], runs["broker"], runs[edge_kind], strict=True)
            ]
        )

    out = summary("quorum")
    out["classic"] = summary("classic")
    floor: dict[str, Any] = {
        "broker_ms": median([r["median_ms"] for r in runs["broker"]]),
        "edge_http_ms": median([r["median_ms"] for r in runs["edge_http"]]),
        "runs": {kind: runs[kind] for kind in floors},
    }
    floor["floor_ms"] = floor["broker_ms"] + floor["edge_http_ms"]
    floor["own_share_ms"] = own("quorum", "edge_http")
    if grpc_missing is None:
        out["grpc"] = summary("grpc")
        floor["edge_grpc_ms"] = median([r["median_ms"] for r in runs["edge_grpc"]])
        floor["floor_grpc_ms"] = floor["broker_ms"] + floor["edge_grpc_ms"]
        floor["own_share_grpc_ms"] = own("grpc", "edge_grpc")
    else:
        out["grpc_unavailable"] = f"not available: {grpc_missing}"
    out["floor"] = floor
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
