"""What one edge call costs through each layer of the HTTP stack, against the emulator (a micro-benchmark).

    .venv/bin/python -m bench.http_call [--calls 300]

One results call (`GET /api/results/{id}`, a 200 with JSON) made the way the worker could make it:
`requests.Session.send` with a prepared request (the worker until 2026-11-27), `HTTPAdapter.send`, the
adapter's own urllib3 pool (the worker now), and bare `http.client` (the floor, for reference). Each is timed
"cold" (after 50 ms idle, as a job's first look comes after the model's run) and "hot" (back to back), as
medians and p90 of wall milliseconds, and as CPU milliseconds of this process per call. Prints a table;
writes nothing.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import IO

import requests
import urllib3

HEADERS = {"Accept": "application/json"}


def start_emulator(latency_s: float = 0.0, capacity: int = 0) -> tuple[subprocess.Popen[str], str]:
    """`python -m worker emulator` on a free port (capacity 0: unlimited slots); the process and its URL."""
    argv = [sys.executable, "-m", "worker", "emulator", "--port", "0"]
    argv += ["--latency", str(latency_s), "--capacity", str(capacity)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        if "emulator_listening" in line:
            url = str(json.loads(line)["url"]).rstrip("/")
            threading.Thread(target=_drain, args=(child.stdout,), daemon=True).start()
            return child, url
    raise SystemExit("the emulator did not start")


def _drain(stream: IO[str]) -> None:
    for _ in stream:
        pass


def timed(call: Callable[[], object], *, gap_s: float, calls: int) -> tuple[float, float]:
    wall: list[float] = []
    for _ in range(calls):
        if gap_s:
            time.sleep(gap_s)  # the idle gap is what is measured
        started = time.perf_counter()
        call()
        wall.append((time.perf_counter() - started) * 1000)
    wall.sort()
    return statistics.median(wall), wall[int(len(wall) * 0.9)]


def cpu_ms(call: Callable[[], object], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        call()
    return (time.process_time() - started) / calls * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    child, url = start_emulator()
    try:
        session = requests.Session()
        session.trust_env = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        session.mount("http://", adapter)
        model = {"identifier": "ed542963de", "version": "1.0.1"}
        body = {"model": model, "input": {"type": "text", "sources": {"job": {"input": "x"}}}}
        job_id = session.post(url + "/api/jobs", json=body, timeout=10).json()["jobIdentifier"]
        path = f"/api/results/{job_id}"
        probe = requests.PreparedRequest()
        probe.prepare(method="GET", url=url + "/")
        pool = adapter.get_connection_with_tls_context(probe, verify=True)
        assert isinstance(pool, urllib3.HTTPConnectionPool)
        timeout = urllib3.Timeout(connect=5, read=30)
        parts = urllib.parse.urlsplit(url)
        raw = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port)

        def session_send() -> object:
            prepared = requests.PreparedRequest()
            prepared.prepare(method="GET", url=url + path, headers=HEADERS)
            return session.send(prepared, timeout=(5, 30), allow_redirects=False).json()

        def adapter_send() -> object:
            prepared = requests.PreparedRequest()
            prepared.prepare(method="GET", url=url + path, headers=HEADERS)
            return adapter.send(prepared, timeout=(5, 30)).json()

        def pool_urlopen() -> object:
            answer = pool.urlopen(
                "GET", path, headers=HEADERS, retries=False, redirect=False, assert_same_host=False, timeout=timeout
            )
            return json.loads(answer.data)

        def bare() -> object:
            raw.request("GET", path, headers=HEADERS)
            return json.loads(raw.getresponse().read())

        ways = [
            ("requests Session.send", session_send),
            ("requests HTTPAdapter.send", adapter_send),
            ("the adapter's urllib3 pool (worker)", pool_urlopen),
            ("http.client (floor)", bare),
        ]
        print(f"{'how':38s} {'cold median':>11s} {'cold p90':>9s} {'hot median':>11s} {'CPU ms':>7s}")
        for name, call in ways:
            cold = timed(call, gap_s=0.05, calls=args.calls)
            hot = timed(call, gap_s=0.0, calls=args.calls)
            cpu = cpu_ms(call, args.calls * 5)
            print(f"{name:38s} {cold[0]:11.3f} {cold[1]:9.3f} {hot[0]:11.3f} {cpu:7.3f}")
    finally:
        child.terminate()
        child.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
