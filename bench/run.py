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
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import pika
import pika.exceptions

from bench.machine import git_state, loadavg, machine_description
from bench.measure import Bench
from bench.plan import (
    BROKER_URL,
    FULL,
    QUICK,
    REPO,
    RESULTS_DIR,
)
from bench.procs import (
    Broker,
)
from bench.report import (
    ROW_HEADERS,
    TARGET_HEADERS,
    _best_concurrency_note,
    _row_cells,
    _target_cells,
    build_rows,
    build_targets,
    format_table,
    plot_throughput,
    write_report,
)
from bench.scenarios import SCENARIOS

# -- main --------------------------------------------------------------------------------------------


def render(results_path: Path) -> int:
    """Write report.md and throughput.png next to an existing results.json, without measuring anything."""
    results = json.loads(results_path.read_text())
    out_dir = results_path.parent
    report = write_report(results, out_dir, plot_throughput(results, out_dir / "throughput.png"))
    print(f"report: {report}")
    return 0


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
        "loadavg_start": loadavg(),
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
    results["loadavg_end"] = loadavg()

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
