"""What the benchmark measures and how much: the shared constants, the targets of issue 4, the run plans."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from worker.config import WorkerConfig

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

# The targets of issue 11 (issue 4's, raised), and issue 4's latency bound, still shown.
TARGET_SPEEDUP = 2.0
TARGET_CPU_RATIO = 0.5
TARGET_REALISTIC = 0.93  # at concurrency 8, the default look-ahead
TARGET_REALISTIC_C16 = 0.98
TARGET_SATURATION = 0.95
TARGET_LATENCY_MS = 6.0
TARGET_OWN_SHARE_MS = 1.0  # the worker's added latency minus the floor (broker's share + edge's share)
TARGET_IDLE_CPU_PCT = 0.5
TARGET_IDLE_RSS_MIB = 60.0
LARGE_BOUND_EXTRA_MIB = 60.0

REALISTIC = (0.05, 8)  # emulator: seconds per job, slots -> ideal 160 jobs/s
SATURATION = (0.1, 4)  # ideal 40 jobs/s
CONCURRENCIES = (1, 2, 4, 8, 16)
DEFAULT_CONCURRENCY = 8
LOOKAHEADS = (0, 1, 2, 4)  # the throughput sweep's series; the worker's default is one of them
DEFAULT_LOOKAHEAD = WorkerConfig().lookahead
GRPC_CONCURRENCIES = (8, 16)  # the realistic sweep over gRPC: the two targets' concurrencies


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
    sweep_s=2.0,  # 20 series (look-ahead x concurrency) and gRPC: the whole run stays near 15 minutes
    latency_requests=150,
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
