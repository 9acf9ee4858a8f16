"""docs/grafana/edge-worker.json and docs/contract.md §9: every series they name is one a real worker exports.

A real worker (with metrics.listen on a free port) runs a few requests against the real broker and the
emulator; its /metrics is parsed with prometheus-client's own parser. Series that have no sample yet (a
labelled counter nothing has incremented) still count as exported when their family is declared.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Producer, ReplyCollector, wait_until
from tests.tlskit import free_port

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana" / "edge-worker.json"
CONTRACT = DASHBOARD.parent.parent / "contract.md"
NAME = re.compile(r"\bedge_worker_[a-z_]+")
# The gauge another change adds (contract §5, "a misbehaving broker"): checked on its own, below.
CONSUMING = "edge_worker_consuming"
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "summary": ("", "_sum", "_count", "_created"),
}
# Labels Prometheus adds at scrape time, and the histogram bucket label.
SCRAPE_LABELS = {"instance", "job", "le"}


def contract_series() -> set[str]:
    """The series names in the first column of docs/contract.md §9's table."""
    text = CONTRACT.read_text()
    section = text.split("## 9. ", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(edge_worker_[a-z_]+)` \|", section, re.M))


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows included."""
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["definition"]


def names_in(expr: str) -> set[str]:
    return set(NAME.findall(expr))


def grouping_labels(expr: str) -> set[str]:
    """Label names in `by (...)` clauses and in `{label=...}` matchers."""
    labels: set[str] = set()
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        labels.update(part.strip() for part in group.split(",") if part.strip())
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels.update(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


def test_dashboard_is_well_formed() -> None:
    """The parts Grafana needs to import it, and the panels issue 12 asks for."""
    d = load()
    assert d["uid"] == "edge-worker" and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    titles = set()
    for panel in d["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert names_in(target["expr"]), (panel["title"], target["expr"])
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
    wanted = {"Throughput", "Request latency", "Errors by status", "Dead letters by code", "In flight"}
    assert wanted | {"Edge up", "Consuming"} <= titles
    latency = " ".join(expr for title, expr in queries(d) if title == "Request latency")
    assert "histogram_quantile(0.95" in latency and "edge_worker_job_duration_seconds_bucket" in latency


class Exported:
    """What one /metrics answer exports: series names (with suffixes by type) and each one's label names."""

    def __init__(self, text: str) -> None:
        self.labels: dict[str, set[str]] = {}
        self.families: dict[str, str] = {}  # family name (a histogram's bare name, a counter's without _total) → type
        for family in text_string_to_metric_families(text):
            self.families[family.name] = family.type
            for suffix in SUFFIXES.get(family.type, ("",)):
                self.labels.setdefault(family.name + suffix, set())
            for sample in family.samples:
                self.labels.setdefault(sample.name, set()).update(sample.labels)

    def __contains__(self, name: str) -> bool:
        return name in self.labels


def get_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
    return text


@pytest.fixture
def scrape_text(emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector) -> str:
    """/metrics of a real worker that has finished, rejected and (after an edge failure) retried requests."""
    port = free_port()
    worker_factory(emulator.url, metrics__listen=f"127.0.0.1:{port}", edge__max_attempts=2).start()
    request = {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"a": {"b": b"\x01"}}}
    ok = producer.publish(request)
    bad = producer.publish(None, raw=b"\xc1 not msgpack")  # REJECTED: a dead letter with a code
    finals = collector.wait_finals(2)
    assert finals[ok][0]["status"] == "COMPLETE" and finals[bad][0]["status"] == "REJECTED"
    # An edge that answers 503 until the worker has counted an error, then heals: edge_errors gets its labels.
    emulator.set_faults(fail_rate=1.0)
    retried = producer.publish(request)
    wait_until(lambda: "edge_worker_edge_errors_total{" in get_metrics(port), 15, what="an edge error counted")
    emulator.set_faults(fail_rate=0.0)
    assert collector.wait_finals(3)[retried][0]["status"] == "COMPLETE"
    return get_metrics(port)


def test_every_series_the_dashboard_names_is_exported(scrape_text: str) -> None:
    exported = Exported(scrape_text)
    assert "edge_worker_job_duration_seconds_bucket" in exported  # the scrape really was parsed
    assert "edge_worker_no_such_series" not in exported
    missing: list[str] = []
    unknown_labels: list[str] = []
    for title, expr in queries(load()):
        names = names_in(expr) - {CONSUMING}
        missing += [f"{title}: {name}" for name in sorted(names) if name not in exported]
        known = set().union(*(exported.labels.get(n, set()) for n in names)) | SCRAPE_LABELS
        unknown_labels += [f"{title}: {label}" for label in sorted(grouping_labels(expr) - known)]
    assert not missing, f"series the dashboard queries but the worker does not export: {missing}"
    # The series list of the contract (docs/contract.md §9), against the same scrape.
    listed = contract_series() - {CONSUMING}
    assert len(listed) >= 13
    lacking = sorted(n for n in listed if n not in exported and exported.families.get(n) != "histogram")
    assert lacking == [], "series docs/contract.md lists but the worker lacks"
    assert not unknown_labels, f"labels the dashboard groups or filters by that the series lack: {unknown_labels}"


def test_consuming_gauge_is_exported__fails_until_it_lands(scrape_text: str) -> None:
    """MAY FAIL until `edge_worker_consuming` (contract §5, §9) is in the worker on main: the "Consuming" panel."""
    assert any(CONSUMING in names_in(expr) for _title, expr in queries(load()))
    assert CONSUMING in contract_series()
    exported = Exported(scrape_text)
    assert CONSUMING in exported, f"{CONSUMING} is not exported yet"
