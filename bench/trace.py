"""Where one job's time goes, hop by hop: a traced worker against the emulator and the real broker.

    .venv/bin/python -m bench.trace                    # 200 requests one at a time, 1-slot 50 ms emulator
    .venv/bin/python -m bench.trace --concurrency 8    # 800 requests on 8 slots x 50 ms, concurrency 8

The worker runs in a process of its own with timestamps (`time.monotonic()`, one clock for every process on
Linux) wrapped around its delivery callback, job thread, HTTP calls, pauses, hand-off to the IO loop,
publish, confirm and ack; the publisher and reply consumer are the benchmark's. Prints the median, mean,
p90 and max of each hop in milliseconds and how many looks each job took. The wrapping adds a little to
every hop, so compare traced runs with traced runs; the benchmark (`bench.run`) is the record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.http_call import start_emulator
from bench.measure import request_body
from bench.plan import BROKER_URL, MODEL
from bench.procs import Broker, Publisher, ReplySink

Event = tuple[float, str, str | None]  # (monotonic time, hop, message id)


def run_traced_worker(out_path: str) -> int:
    """In the worker's process: wrap the hops, run the daemon, write the events when it exits."""
    from worker import broker, broker_publish, cli, edge, jobs, service

    events: list[Event] = []
    current = threading.local()

    def record(name: str, key: str | None = None) -> None:
        events.append((time.monotonic(), name, key if key is not None else getattr(current, "key", None)))

    def wrap(cls: Any, method: str, name: str, key_of: Callable[..., str | None] | None, *, after: bool) -> None:
        original = getattr(cls, method)

        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            key = key_of(self, *args, **kwargs) if key_of else None
            record(f"{name}:in", key)
            try:
                return original(self, *args, **kwargs)
            finally:
                if after:
                    record(f"{name}:out", key)

        setattr(cls, method, wrapper)

    original_work = service.Daemon._work

    def work(self: Any, start: Any) -> None:
        current.key = start.route.message_id
        record("work:in")
        original_work(self, start)

    service.Daemon._work = work  # type: ignore[method-assign]
    wrap(broker.BrokerLink, "_deliver", "deliver", lambda s, ch, m, p, b: p.message_id, after=False)
    wrap(service.Daemon, "_complete", "complete", lambda s, e, o: e.key, after=False)
    wrap(edge.HttpEdgeClient, "_request_once", "http", None, after=True)
    wrap(jobs.JobRunner, "_pause", "pause", None, after=True)

    def published_key(_self: Any, **kwargs: Any) -> str | None:
        return kwargs["properties"].correlation_id  # type: ignore[no-any-return]

    wrap(broker_publish.PublishChannel, "publish", "publish", published_key, after=False)

    def confirmed_key(self: Any, frame: Any) -> str | None:
        pending = self._pending.get(frame.method.delivery_tag)
        return pending.correlation_id if pending else None

    wrap(broker.Confirms, "on_confirm", "confirm", confirmed_key, after=False)
    wrap(broker.BrokerLink, "ack", "ack", lambda s, d: d.properties.message_id, after=False)
    try:
        return cli.main(["run"])
    finally:
        Path(out_path).write_text(json.dumps(events))


def _first(events: list[tuple[float, str]], name: str) -> float | None:
    return next((t for t, n in events if n == name), None)


def hops(events: list[Event], sent: dict[str, tuple[float, float]]) -> list[dict[str, float]]:
    """Per job: the time between consecutive hops (seconds), for jobs whose every hop was seen."""
    by_key: dict[str, list[tuple[float, str]]] = {}
    for moment, name, key in events:
        if key is not None:
            by_key.setdefault(key, []).append((moment, name))
    rows = []
    for key, seen in by_key.items():
        calls = [t for t, n in seen if n.startswith("http")]
        pauses = [t for t, n in seen if n.startswith("pause")]
        marks = {n: _first(seen, n) for n in ("deliver:in", "work:in", "complete:in", "publish:in", "confirm:in")}
        ack = _first(seen, "ack:in")
        if ack is None or None in marks.values() or len(calls) < 4 or len(pauses) < 2:
            continue
        d, w, c, p, f = (marks[n] or 0.0 for n in marks)
        row = {
            "delivery to job thread": w - d,
            "job thread to submission sent": calls[0] - w,
            "submission call": calls[1] - calls[0],
            "receipt to first look": pauses[1] - pauses[0],
            "first results call": calls[3] - calls[2],
            "last call to IO loop": c - calls[-1],
            "IO loop to publish": p - c,
            "publish to confirm": f - p,
            "confirm to ack": ack - f,
            "looks": len(calls) / 2 - 1,
        }
        if key in sent:
            published, received = sent[key]
            row["publish to delivery"] = d - published
            row["ack to reply received"] = received - ack
            row["added in all"] = received - published - 0.05
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=0, help="0: one request at a time (default)")
    parser.add_argument("--requests", type=int, default=0, help="default 200, or 800 with --concurrency")
    parser.add_argument("--queue-type", default="quorum", choices=["quorum", "classic"])
    parser.add_argument("--as-worker", metavar="EVENTS_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.as_worker:
        return run_traced_worker(args.as_worker)
    concurrent = args.concurrency > 0
    count = args.requests or (800 if concurrent else 200)
    emulator, url = start_emulator(0.05, 8 if concurrent else 1)
    prefix = f"bench.trace.{uuid.uuid4().hex[:8]}"
    queues = (f"{prefix}.jobs", f"{prefix}.replies", f"{prefix}.dead")
    workdir = Path(tempfile.mkdtemp(prefix="edge-worker-trace-"))
    events_path = workdir / "events.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
    env.update(
        {
            "EDGE_WORKER_AMQP__URL": BROKER_URL,
            "EDGE_WORKER_AMQP__QUEUE": queues[0],
            "EDGE_WORKER_AMQP__REPLY_QUEUE": queues[1],
            "EDGE_WORKER_AMQP__DEAD_LETTER_QUEUE": queues[2],
            "EDGE_WORKER_AMQP__QUEUE_TYPE": args.queue_type,
            "EDGE_WORKER_EDGE__URL": url,
            "EDGE_WORKER_WORKER__CONCURRENCY": str(args.concurrency or 8),
            "EDGE_WORKER_WORKER__STATE_DIR": str(workdir / "state"),
            "EDGE_WORKER_LOG__LEVEL": "warning",
        }
    )
    worker = subprocess.Popen([sys.executable, "-m", "bench.trace", "--as-worker", str(events_path)], env=env)
    broker = Broker(BROKER_URL)
    sent: dict[str, tuple[float, float]] = {}
    try:
        deadline = time.monotonic() + 30
        while not ((c := broker.queue_counts(queues[0])) and c[1] >= 1):
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit("the traced worker did not start consuming")
            broker.sleep(0.05)
        sink = ReplySink(broker, queues[1])
        publisher = Publisher(broker, queues[0], queues[1], confirm=False)
        body = request_body(MODEL, os.urandom(1024))
        if concurrent:
            warm = [publisher.publish(body) for _ in range(40)]
            sink.expect(warm)
            sink.wait(watch=[], doing="warming up")
            ids = [publisher.publish(body) for _ in range(count)]
            started = time.perf_counter()
            sink.expect(ids)
            sink.wait(watch=[], doing=f"{count} replies")
            seconds = max(sink.arrivals.values()) - started
            print(f"concurrency {args.concurrency}: {count / seconds:.1f} jobs/s after publishing ({seconds:.2f} s)")
        else:
            for n in range(count + 10):  # 10 to warm up, not counted
                published, started = time.monotonic(), time.perf_counter()
                message_id = publisher.publish(body)
                sink.expect([message_id])
                sink.wait(watch=[], doing="one reply")
                if n >= 10:
                    sent[message_id] = (published, published + sink.arrivals[message_id] - started)
        publisher.close()
        sink.close()
    finally:
        worker.terminate()
        worker.wait(60)
        emulator.terminate()
        emulator.wait(10)
        broker.delete(list(queues))
        broker.close()
    events: list[Event] = [(t, n, k) for t, n, k in json.loads(events_path.read_text())]
    rows = hops(events, sent) if not concurrent else [r for r in hops(events, {}) if r]
    if not concurrent:
        rows = [r for r in rows if "added in all" in r]
    print(f"{len(rows)} jobs traced ({args.queue_type} queues); ms:")
    print(f"{'hop':32s} {'median':>8s} {'mean':>8s} {'p90':>8s} {'max':>8s}")
    for hop in rows[0]:
        if hop == "looks":
            continue
        values = sorted(r[hop] * 1000 for r in rows)
        p90 = values[int(len(values) * 0.9)]
        mean = statistics.mean(values)
        print(f"{hop:32s} {statistics.median(values):8.3f} {mean:8.3f} {p90:8.3f} {values[-1]:8.2f}")
    print("looks per job:", dict(sorted(Counter(int(r["looks"]) for r in rows).items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
