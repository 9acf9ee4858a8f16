"""Issue 10, bounded decoding: hostile request bodies against the real broker and a real worker process.

For each amplification shape of tests/hostile.py, at about 1 and 8 MiB, the worker process's peak resident
memory is reset (writing 5 to /proc/PID/clear_refs resets VmHWM to the current RSS), the body is published,
and once its REJECTED reply and its dead letter are back, VmHWM says how far the process rose while it
received, decoded, rejected and dead-lettered the body. The bound asserted (the contract's §4):

    peak rise <= 4 x body size + 4 MiB

measured for the whole process, so it also covers what pika costs to receive the body and to publish it to
the dead-letter queue. The unpacking decoder this replaced rose up to 73 times the body's size (576 MiB for
8 MiB of empty maps in lists); this one about 2 times, copies of the body on its way in and out (the
decoder itself allocates under 1 MiB for these shapes: tests/test_messages.py, under tracemalloc).

The valid large bodies of the corpus are left to the unit tests: here they would run edge jobs, whose cost
is not decoding's. Run with -s for the table of peaks. HOSTILE_WORKER_PYTHONPATH=DIR runs the worker from
another source tree (for example main's, to measure the old decoder: the test then fails with its table).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import hostile
from tests.conftest import Producer, Queues, ReplyCollector, WorkerProcess, wait_until
from worker.emulator import EdgeEmulator

MIB = hostile.MIB
SLACK = hostile.SLACK  # the "few MiB" (4): pika's frames of the body in and out fit in the 4x
FACTOR = 4
DEADLINE_S = 60.0  # per case: the old decoder took seconds for the 8 MiB shapes


def bound(size: int) -> int:
    return FACTOR * size + SLACK


def chosen_cases() -> list[hostile.Case]:
    """Each rejected shape once under an ignored key, the many-objects shape at every known key, the specials.

    Where a shape sits does not change what the decoder does with it (the unit tests prove every placement);
    these cover every shape and every placement while keeping the run short.
    """
    out: list[hostile.Case] = []
    for label, size in hostile.SIZES.items():
        for case in hostile.cases(size, label):
            if case.phrase is None:
                continue  # valid after all: an edge job, not a rejection
            shape, _, place = case.id.rpartition("-")[0].partition("@")
            if not place or place == "ignored" or shape == "tiny_maps":
                out.append(case)
    return out


def memory_kib(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            fields[name] = int(value.split()[0])
    return fields


def reset_peak(pid: int) -> int:
    """Reset the process's VmHWM to its current RSS; returns that RSS in bytes."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_kib(pid)["VmHWM"] * 1024


@dataclass
class Row:
    case: str
    size: int
    delta: int
    status: str
    code: str
    message: str

    def line(self) -> str:
        ok = "ok" if self.delta <= bound(self.size) else "OVER"
        return (
            f"{self.case:40s} {self.size / MIB:6.2f} {self.delta / MIB:9.1f} {self.delta / self.size:7.2f} "
            f"{bound(self.size) / MIB:7.1f} {ok:4s} {self.status}/{self.code}"
        )


def table(rows: list[Row]) -> str:
    head = f"{'shape':40s} {'MiB':>6s} {'peak+MiB':>9s} {'ratio':>7s} {'bound':>7s} {'':4s} reply"
    return "\n".join([head, *(row.line() for row in rows)])


@pytest.fixture
def hostile_worker(emulator: EdgeEmulator, worker_factory: Any) -> WorkerProcess:
    worker: WorkerProcess = worker_factory(emulator.url, worker__concurrency=1)
    other = os.environ.get("HOSTILE_WORKER_PYTHONPATH")
    if other:
        # Without PYTHONSAFEPATH, `python -m worker` would find this checkout's package in the cwd first.
        worker.env.update(PYTHONPATH=other, PYTHONSAFEPATH="1")
    # A fixed mmap threshold makes glibc give freed large blocks back at once: each case then starts from
    # the same resident baseline, instead of reusing pages an earlier case left resident (which would hide
    # part of its rise). It changes what is kept after a case, not the peak during one.
    worker.env.update(MALLOC_MMAP_THRESHOLD_=str(128 * 1024), MALLOC_TRIM_THRESHOLD_=str(128 * 1024))
    return worker.start()


def test_hostile_bodies_are_rejected_within_the_memory_bound(
    hostile_worker: WorkerProcess, producer: Producer, collector: ReplyCollector, queues: Queues
) -> None:
    pid = hostile_worker.pid
    cases = chosen_cases()
    rows: list[Row] = []
    for case in cases:
        body = case.body()
        baseline = reset_peak(pid)
        message_id = f"{case.id}-{uuid.uuid4().hex[:8]}"
        producer.publish(None, raw=body, message_id=message_id)

        def answered(message_id: str = message_id) -> bool:
            collector.poll()
            return message_id in collector.finals()

        wait_until(answered, DEADLINE_S, interval_s=0.05, what=f"the final reply to {case.id}")
        reply = collector.finals()[message_id][0]
        error = reply.get("error") or {}
        if reply["status"] == "REJECTED":
            dead = wait_until(lambda: producer.drain(queues.dead_letter_queue), 10, what=f"{case.id}'s dead letter")
            assert len(dead) == 1, case.id
            props, dead_body = dead[0]
            assert props.message_id == message_id
            assert dead_body == body, f"{case.id}: the dead letter is not the request unchanged"
            assert props.headers["x-error-code"] == error.get("code")
        peak = memory_kib(pid)["VmHWM"] * 1024
        rows.append(
            Row(
                case.id,
                len(body),
                peak - baseline,
                reply["status"],
                error.get("code", "-"),
                error.get("message", ""),
            )
        )
        assert hostile_worker.running(), f"the worker died on {case.id}: {hostile_worker.tail()}"
    report = table(rows)
    print(f"\nworker peak rise per hostile body (bound: {FACTOR} x size + {SLACK // MIB} MiB)\n{report}")

    wrong = [
        f"{row.case}: {row.status}/{row.code} {row.message!r}"
        for row, case in zip(rows, cases, strict=True)
        if row.status != "REJECTED"
        or row.code != "INVALID_REQUEST"
        or (case.phrase or "") not in row.message
        or case.path not in row.message
    ]
    over = [row.case for row in rows if row.delta > bound(row.size)]
    assert not wrong, "\n".join(["not rejected as expected:", *wrong, report])
    assert not over, f"over the bound: {over}\n{report}"

    # The worker still serves: a normal request completes.
    correlation_id = producer.publish({"model": hostile.MODEL, "sources": {"cam-1": {"image": b"\x89PNG"}}})
    wait_until(lambda: collector.poll() and correlation_id in collector.finals(), 30, what="the normal request")
    assert collector.finals()[correlation_id][0]["status"] == "COMPLETE"
    assert producer.message_count(queues.dead_letter_queue) == 0
