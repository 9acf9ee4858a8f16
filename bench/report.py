"""The report: rows and targets from results.json, the tables, the plot, the machine description, report.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.plan import (
    DEFAULT_CONCURRENCY,
    DEFAULT_LOOKAHEAD,
    REALISTIC,
    TARGET_CPU_RATIO,
    TARGET_IDLE_CPU_PCT,
    TARGET_IDLE_RSS_MIB,
    TARGET_OWN_SHARE_MS,
    TARGET_REALISTIC,
    TARGET_REALISTIC_C16,
    TARGET_SATURATION,
    TARGET_SPEEDUP,
)

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
        for label, name in (
            ("worker_c8", "edge-worker, concurrency 8"),
            ("worker_c1", "edge-worker, concurrency 1"),
            ("worker_c8_grpc", "edge-worker over gRPC, concurrency 8"),
        ):
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
    if "grpc" in over:
        rows.append(Row("overhead", "gRPC", over["grpc"]))
    default_la = _get(s, "concurrency", "default_lookahead")
    by_la = _get(s, "concurrency", "by_lookahead") or {}
    if not by_la and _get(s, "concurrency", "by_concurrency"):  # a run from before look-ahead
        by_la = {"?": s["concurrency"]["by_concurrency"]}
    for la, series in by_la.items():
        for c, entry in series.items():
            rows.append(
                Row(
                    "realistic 8x50ms",
                    f"jobs/s at concurrency {c}, look-ahead {la}" + (" (default)" if la == str(default_la) else ""),
                    f"{entry['jobs_per_s']:.1f}",
                    f"ideal {entry['ideal_per_s']:g}",
                    f"{entry['jobs_per_s'] / entry['ideal_per_s']:.3f}",
                )
            )
    for c, entry in (_get(s, "concurrency", "grpc_by_concurrency") or {}).items():
        rows.append(
            Row(
                "realistic 8x50ms",
                f"jobs/s over gRPC at concurrency {c}, look-ahead {entry.get('lookahead')}",
                f"{entry['jobs_per_s']:.1f}",
                f"ideal {entry['ideal_per_s']:g}",
                f"{entry['jobs_per_s'] / entry['ideal_per_s']:.3f}",
            )
        )
    if "grpc" in (s.get("concurrency") or {}):
        rows.append(Row("realistic 8x50ms", "gRPC", s["concurrency"]["grpc"]))
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
        floor = lat.get("floor")
        if floor:
            rows.append(
                Row(
                    "latency 1x50ms",
                    "floor: the broker's share, ms (echo consumer: confirmed reply, then ack)",
                    f"{floor['broker_ms']:.2f}",
                )
            )
            rows.append(
                Row(
                    "latency 1x50ms",
                    "floor: the edge's share, ms (submit + results, one HTTP client)",
                    f"{floor['edge_http_ms']:.2f}",
                )
            )
            rows.append(
                Row(
                    "latency 1x50ms",
                    "worker's added ms against the floor (broker + edge)",
                    f"{lat['median_ms']:.2f}",
                    f"floor {floor['floor_ms']:.2f}",
                    f"own share {floor['own_share_ms']:+.2f} ms",
                )
            )
            if "edge_grpc_ms" in floor and "grpc" in lat:
                rows.append(
                    Row(
                        "latency 1x50ms",
                        "over gRPC: added ms against the floor (broker + two gRPC calls)",
                        f"{lat['grpc']['median_ms']:.2f}",
                        f"floor {floor['floor_grpc_ms']:.2f} (edge {floor['edge_grpc_ms']:.2f})",
                        f"own share {floor['own_share_grpc_ms']:+.2f} ms",
                    )
                )
        if "grpc_unavailable" in lat:
            rows.append(Row("latency 1x50ms", "gRPC", lat["grpc_unavailable"]))
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
    realistic16 = _get(s, "concurrency", "by_concurrency", "16", "share_of_edge_ideal")
    la = _get(s, "concurrency", "default_lookahead")
    la = DEFAULT_LOOKAHEAD if la is None else la
    saturation = _get(s, "saturation", "share")
    own = _get(s, "latency", "floor", "own_share_ms")
    idle_cpu, idle_rss = _get(s, "idle", "cpu_pct"), _get(s, "idle", "rss_mib")
    checks: list[tuple[str, str, Any, str, str, float, str]] = [
        # scenario, target, measured value, its format, comparison, bound, the target as written
        ("overhead", "overhead: jobs/s vs naive", speedup, "{:.2f}x", ">=", TARGET_SPEEDUP, f">= {TARGET_SPEEDUP:g}x"),
        (
            "overhead",
            "overhead: CPU ms/job vs naive",
            cpu_ratio,
            "{:.2f}x",
            "<=",
            TARGET_CPU_RATIO,
            f"<= {TARGET_CPU_RATIO:g}x",
        ),
        (
            "concurrency",
            f"realistic (8x50ms, concurrency 8, look-ahead {la})",
            realistic,
            "{:.3f}",
            ">=",
            TARGET_REALISTIC,
            f">= {TARGET_REALISTIC:.2f}",
        ),
        (
            "concurrency",
            f"realistic (8x50ms, concurrency 16, look-ahead {la})",
            realistic16,
            "{:.3f}",
            ">=",
            TARGET_REALISTIC_C16,
            f">= {TARGET_REALISTIC_C16:.2f}",
        ),
        ("saturation", "saturation (4x100ms, concurrency 8)", saturation, "{:.3f}", ">=", TARGET_SATURATION, ">= 0.95"),
        (
            "latency",
            "latency: the worker's own share (added minus floor), median of runs",
            own,
            "{:.2f} ms",
            "<=",
            TARGET_OWN_SHARE_MS,
            f"<= {TARGET_OWN_SHARE_MS:g} ms",
        ),
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
        targets.insert(6, Target(name, f"intact, <= {large['bound_mib']:.0f} MiB", measured, passed))
    else:
        targets.insert(6, Target(name, "", _not_measured(results, "large"), None))
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
    """Jobs/s against concurrency, one line per look-ahead (and gRPC at the default, when measured)."""
    conc = _get(results, "scenarios", "concurrency") or {}
    series: dict[str, dict[str, Any]] = {
        f"look-ahead {la}": by_c for la, by_c in (conc.get("by_lookahead") or {}).items()
    }
    if not series and conc.get("by_concurrency"):
        series["edge-worker"] = conc["by_concurrency"]
    if conc.get("grpc_by_concurrency"):
        series[f"gRPC, look-ahead {conc.get('default_lookahead')}"] = conc["grpc_by_concurrency"]
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    latency_s, capacity = REALISTIC
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    ideal_x = [1, 2, 4, 8, 16]
    ax.plot(
        ideal_x, [min(c, capacity) / latency_s for c in ideal_x], "--", color="grey", label="ideal: min(c, 8) / 50 ms"
    )
    ax.axhline(
        TARGET_REALISTIC * capacity / latency_s,
        color="tab:red",
        lw=0.8,
        ls=":",
        label=f"target {TARGET_REALISTIC:.2f} x 160/s (c 8)",
    )
    ax.axhline(
        TARGET_REALISTIC_C16 * capacity / latency_s,
        color="tab:purple",
        lw=0.8,
        ls=":",
        label=f"target {TARGET_REALISTIC_C16:.2f} x 160/s (c 16)",
    )
    default = f"look-ahead {conc.get('default_lookahead')}"
    for name, by_c in series.items():
        xs = sorted(int(c) for c in by_c)
        ys = [by_c[str(c)]["jobs_per_s"] for c in xs]
        lows = [min(r["jobs_per_s"] for r in by_c[str(c)]["runs"]) for c in xs]
        highs = [max(r["jobs_per_s"] for r in by_c[str(c)]["runs"]) for c in xs]
        ax.errorbar(
            xs,
            ys,
            yerr=[[y - lo for y, lo in zip(ys, lows, strict=True)], [hi - y for y, hi in zip(ys, highs, strict=True)]],
            fmt="s--" if name.startswith("gRPC") else "o-",
            lw=2.0 if name == default else 1.0,
            capsize=3,
            label=name + (" (default)" if name == default else ""),
        )
        if name == default:
            for x, y in zip(xs, ys, strict=True):
                ax.annotate(f"{y:.0f}", (x, y), textcoords="offset points", xytext=(6, -12), ha="left", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ideal_x, [str(x) for x in ideal_x])
    ax.set_xlabel("worker concurrency (worker.concurrency)")
    ax.set_ylabel("jobs/s (median, min-max)")
    ax.set_ylim(0, capacity / latency_s * 1.15)
    ax.set_title("Throughput against concurrency and look-ahead, emulated edge with 8 slots x 50 ms")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


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
        "# edge-worker benchmark (issues 4 and 11)",
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
        "concurrency and look-ahead (worker.lookahead 0, 1, 2, 4; and over gRPC at concurrency 8 and 16 with "
        "the default look-ahead, when the worker speaks gRPC), each on its own queues, all started first, the "
        "runs going round them repeat after repeat (a slow spell of the machine falls on all alike); jobs per "
        "run = ideal rate x "
        f"{results['plan']['sweep_s']:g} s (at least 40). saturation: 4 slots x 100 ms, concurrency 8.",
        f"- latency: {results['plan']['latency_requests']} sequential requests a run on a 1-slot 50 ms emulator, "
        "after 10 warm-up requests; added = publish-to-reply time minus 50 ms. One worker on quorum queues, "
        "one on classic queues (and one over gRPC when available), and the floor, all taking turns each repeat: "
        "the broker's share is the publish-to-reply time of `bench.floor echo` (replies at once: a confirmed "
        "publish, then the ack, on quorum queues declared as the worker declares them); the edge's share is the "
        "wall time of the worker's two edge calls (submit; results once the job has run) made by the benchmark "
        "through one kept-alive urllib3 connection (or the gRPC stubs). Own share = added minus (broker + "
        "edge), per repeat, median over repeats.",
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
