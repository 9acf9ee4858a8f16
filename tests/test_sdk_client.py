"""The edge SDK's own EdgeClient (modzy-sdk 0.11.6 from PyPI, in an environment of its own) against the
emulator's gRPC face: if the SDK gets the answers a real edge gives it, the emulator speaks as a real edge
does, and a worker tested against the same face speaks as the SDK does."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.sdk_env import SDK_REQUIREMENT, SdkEnvUnavailable, sdk_python
from worker.emulator import EdgeEmulator, EmulatorConfig

PROBE = Path(__file__).with_name("sdk_probe.py")
MODEL = {"identifier": "ed542963de", "version": "1.0.1"}


@pytest.fixture(scope="module")
def sdk() -> Path:
    try:
        return sdk_python()
    except SdkEnvUnavailable as exc:
        reason = f"the edge SDK's environment ({SDK_REQUIREMENT}) is missing: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def grpc_edge() -> Iterator[EdgeEmulator]:
    with EdgeEmulator(EmulatorConfig(port=0, grpc_port=0, latency_s=0.05)) as emulator:
        yield emulator


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_sdk_submits_polls_and_reads_results(sdk: Path, grpc_edge: EdgeEmulator) -> None:
    image = os.urandom(20_000) + b"\x00\xff\r\n"
    config = b'{"threshold": 0.5}'
    text = "héllo from the SDK ✓"
    spec = {
        "host": "127.0.0.1",
        "port": grpc_edge.grpc_port,
        "model": MODEL,
        "embedded": {
            "cat": {"image": base64.b64encode(image).decode(), "config.json": base64.b64encode(config).decode()}
        },
        "text": {"input.txt": text},  # one level: the SDK wraps it as the source "job"
    }
    done = subprocess.run(
        [str(sdk), str(PROBE)], input=json.dumps(spec), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, Any] = json.loads(done.stdout)

    embedded, plain = out["embedded"], out["text"]
    assert embedded["first"]["jobIdentifier"] == embedded["job"]
    assert embedded["first"]["status"] in ("SUBMITTED", "IN_PROGRESS", "COMPLETE")
    assert embedded["final"]["status"] == "COMPLETE" and plain["final"]["status"] == "COMPLETE"
    assert embedded["final"]["jobInputs"] == [{"identifier": "cat"}]

    cat = embedded["results"]["results"]["cat"]
    assert cat["status"] == "SUCCESSFUL"
    assert cat["results.json"]["inputs"] == {
        "image": {"sha256": sha256(image), "size": len(image)},
        "config.json": {"sha256": sha256(config), "size": len(config)},
    }
    assert cat["results.json"]["explain"] is True and embedded["results"]["finished"] is True
    job = plain["results"]["results"]["job"]
    assert job["results.json"]["inputs"] == {"input.txt": {"sha256": sha256(text.encode()), "size": len(text.encode())}}

    listed = [summary["jobIdentifier"] for summary in out["all_jobs"]["jobs"]]
    assert listed == [embedded["job"], plain["job"]]
    assert "not found" in out["unknown_model"]
    stats = grpc_edge.stats()
    assert stats["calls_by_face"]["http"] == 0  # everything went over gRPC
    assert stats["jobs_submitted"] == 2 and stats["calls"]["submit"] == 3 and stats["calls"]["results"] == 2
