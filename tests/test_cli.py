"""The `edge-worker` command (§6), run as a real process: check-config, submit, healthcheck, usage errors."""

# pytest hands fixtures in as parameters: a test needing six of them is not a function design smell.
# ruff: noqa: PLR0917

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Queues, ReplyCollector
from worker.emulator import EdgeEmulator

EDGE_WORKER = Path(sys.executable).parent / "edge-worker"


def run(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 60, module: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the command with a clean EDGE_WORKER_* environment plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
    full_env.update(env or {})
    command = [sys.executable, "-m", "worker", *args] if module else [str(EDGE_WORKER), *args]
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.fixture
def empty_config(tmp_path: Path) -> Path:
    """An empty file: the defaults, without reading the machine's /etc/edge-worker/config.toml."""
    path = tmp_path / "empty.toml"
    path.write_text("", encoding="utf-8")
    return path


def broker_env(broker_url: str, queues: Queues) -> dict[str, str]:
    return {
        "EDGE_WORKER_AMQP__URL": broker_url,
        "EDGE_WORKER_AMQP__QUEUE": queues.queue,
        "EDGE_WORKER_AMQP__REPLY_QUEUE": queues.reply_queue,
        "EDGE_WORKER_AMQP__DEAD_LETTER_QUEUE": queues.dead_letter_queue,
    }


# -- usage ----------------------------------------------------------------------------------------------


def test_python_m_worker_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("run", "check-config", "healthcheck", "submit", "emulator"):
        assert command in result.stdout


def test_console_script_reports_its_version() -> None:
    assert EDGE_WORKER.exists(), "the edge-worker console script is not installed"
    result = run("--version", module=False)
    assert result.returncode == 0
    assert result.stdout.startswith("edge-worker ")


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["frobnicate"],
        ["submit", "--version", "1"],  # no --model
        ["submit", "--model", "m", "--version", "1", "--timeout", "soon"],
    ],
    ids=["no command", "unknown command", "missing --model", "bad --timeout"],
)
def test_bad_usage_exits_64(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 64, (result.stdout, result.stderr)
    assert "usage: edge-worker" in result.stderr


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cam-image=@x", "expected SOURCE:KEY=@FILE or SOURCE:KEY=TEXT"),
        ("cam:image", "expected SOURCE:KEY=@FILE or SOURCE:KEY=TEXT"),
        (":image=x", "expected SOURCE:KEY=@FILE or SOURCE:KEY=TEXT"),
        ("cam:=x", "expected SOURCE:KEY=@FILE or SOURCE:KEY=TEXT"),
        ("cam:image=@/nonexistent/file.png", "cannot read '/nonexistent/file.png'"),
    ],
)
def test_bad_input_exits_64(empty_config: Path, spec: str, message: str) -> None:
    result = run("submit", "--config", str(empty_config), "--model", "m", "--version", "1", "--input", spec)
    assert result.returncode == 64, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stdout == ""


def test_submit_without_input_exits_64(empty_config: Path) -> None:
    result = run("submit", "--config", str(empty_config), "--model", "m", "--version", "1")
    assert result.returncode == 64
    assert "at least one --input" in result.stderr


# -- check-config -------------------------------------------------------------------------------------


def test_check_config_prints_the_masked_configuration_and_exits_0(tmp_path: Path) -> None:
    secret = tmp_path / "amqp_password"
    secret.write_text("file-secret\n", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(
        f'[amqp]\nurl = "amqp://app:url-secret@rabbit:5672/%2F"\npassword_file = "{secret}"\n'
        '[edge]\napi_key = "api-secret"\n[worker]\nconcurrency = 4\n',
        encoding="utf-8",
    )
    result = run("check-config", "--config", str(config), env={"EDGE_WORKER_LOG__LEVEL": "debug"})
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["worker"]["concurrency"] == 4
    assert printed["log"]["level"] == "debug"  # the environment overrides the file
    assert printed["amqp"]["url"] == ["amqp://app:****@rabbit:5672/%2F"]
    assert printed["amqp"]["password"] == "****"
    assert printed["edge"]["api_key"] == "****"
    for secret_text in ("url-secret", "file-secret", "api-secret"):
        assert secret_text not in result.stdout + result.stderr
    assert f"configuration OK (source: {config})" in result.stderr


def test_check_config_of_the_example_file() -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    result = run("check-config", "--config", str(example))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["amqp"]["queue"] == "edge.jobs"


def test_check_config_exits_78_naming_a_bad_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[worker]\nconcurency = 4\n", encoding="utf-8")
    result = run("check-config", "--config", str(config))
    assert result.returncode == 78
    assert "unknown key worker.concurency" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGE_WORKER_WORKER__CONCURRENCY": "many"}, "worker.concurrency: expected an integer, got 'many'"),
        ({"EDGE_WORKER_AMQP__QUEUE_TYPE": "stream"}, "amqp.queue_type"),
        ({"EDGE_WORKER_NOPE__X": "1"}, "EDGE_WORKER_NOPE__X"),
    ],
)
def test_bad_environment_exits_78_naming_the_key(empty_config: Path, env: dict[str, str], message: str) -> None:
    result = run("check-config", "--config", str(empty_config), env=env)
    assert result.returncode == 78
    assert message in result.stderr


def test_missing_config_file_exits_78(tmp_path: Path) -> None:
    result = run("check-config", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 78
    assert "does not exist" in result.stderr


def test_run_with_a_bad_configuration_exits_78(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[edge]\nupload = 'carrier-pigeon'\n", encoding="utf-8")
    result = run("run", "--config", str(config), timeout_s=30)
    assert result.returncode == 78
    assert "edge.upload" in result.stderr


# -- against a running worker -------------------------------------------------------------------------


def test_submit_wait_prints_the_complete_reply_as_json(
    emulator: EdgeEmulator, worker_factory: Any, queues: Queues, broker_url: str, empty_config: Path, tmp_path: Path
) -> None:
    worker_factory(emulator.url).start()
    image = tmp_path / "image.bin"
    image.write_bytes(bytes(range(256)) * 8)
    result = run(
        "submit",
        "--config",
        str(empty_config),
        "--model",
        "sha256",
        "--version",
        "1.0.0",
        "--input",
        f"cam-1:image=@{image}",
        "--input",
        "cam-1:caption=snow ☃",
        "--input",
        "cam-2:image=@" + str(image),
        "--request-id",
        "cli-1",
        "--explain",
        "--wait",
        "--timeout",
        "20",
        env=broker_env(broker_url, queues),
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    reply = json.loads(result.stdout)
    assert reply["status"] == "COMPLETE"
    assert reply["final"] is True
    assert reply["request_id"] == "cli-1"
    assert reply["explain"] is True
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    assert reply["results"]["cam-1"]["inputs"]["image"]["sha256"] == digest
    assert reply["results"]["cam-1"]["inputs"]["caption"]["sha256"] == hashlib.sha256("snow ☃".encode()).hexdigest()
    assert reply["results"]["cam-2"]["inputs"]["image"]["sha256"] == digest
    [job] = emulator.stats()["jobs"]
    assert job["input_type"] == "embedded"


def test_submit_wait_exits_1_and_prints_an_error_reply(
    emulator: EdgeEmulator, worker_factory: Any, queues: Queues, broker_url: str, empty_config: Path
) -> None:
    worker_factory(emulator.url).start()
    result = run(
        "submit",
        "--config",
        str(empty_config),
        "--model",
        "no-such-model",
        "--version",
        "1",
        "--input",
        "doc:t=hello",
        "--wait",
        "--timeout",
        "20",
        env=broker_env(broker_url, queues),
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    reply = json.loads(result.stdout)
    assert (reply["status"], reply["error"]["code"]) == ("ERROR", "MODEL_NOT_FOUND")


def test_submit_without_wait_publishes_and_the_reply_goes_to_the_reply_queue(
    emulator: EdgeEmulator,
    worker_factory: Any,
    queues: Queues,
    broker_url: str,
    empty_config: Path,
    collector: ReplyCollector,
) -> None:
    worker_factory(emulator.url).start()
    result = run(
        "submit",
        "--config",
        str(empty_config),
        "--model",
        "sha256",
        "--version",
        "1.0.0",
        "--input",
        "doc:t=hello",
        env=broker_env(broker_url, queues),
    )
    assert result.returncode == 0, result.stderr
    published = json.loads(result.stdout)
    assert published["published"] is True
    assert published["queue"] == queues.queue
    finals = collector.wait_finals(1)
    assert finals[published["correlation_id"]][0]["status"] == "COMPLETE"


def test_submit_with_the_broker_unreachable_exits_69(empty_config: Path) -> None:
    result = run(
        "submit",
        "--config",
        str(empty_config),
        "--model",
        "m",
        "--version",
        "1",
        "--input",
        "a:b=c",
        env={"EDGE_WORKER_AMQP__URL": "amqp://guest:secret-pw@127.0.0.1:1/%2F"},
    )
    assert result.returncode == 69
    assert "unreachable" in result.stderr
    assert "secret-pw" not in result.stderr


def test_healthcheck_exits_0_when_broker_and_edge_answer_and_1_naming_the_one_that_does_not(
    emulator: EdgeEmulator, broker_url: str, empty_config: Path
) -> None:
    env = {"EDGE_WORKER_AMQP__URL": broker_url, "EDGE_WORKER_EDGE__URL": emulator.url}
    healthy = run("healthcheck", "--config", str(empty_config), env=env)
    assert healthy.returncode == 0, healthy.stdout
    assert healthy.stdout.startswith("ok:")
    emulator.stop()
    try:
        sick = run("healthcheck", "--config", str(empty_config), env=env)
    finally:
        emulator.start()
    assert sick.returncode == 1
    assert len(sick.stdout.strip().splitlines()) == 1
    assert f"edge {emulator.url} unreachable" in sick.stdout
    assert "broker" not in sick.stdout


def test_check_config_prints_a_grpc_edge_url(empty_config: Path) -> None:
    pytest.importorskip("grpc")
    result = run("check-config", "--config", str(empty_config), env={"EDGE_WORKER_EDGE__URL": "grpc://10.0.0.7:55000"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["edge"]["url"] == "grpc://10.0.0.7:55000"


def test_healthcheck_over_grpc_asks_for_the_features_and_names_the_grpc_url_of_a_grpc_port(
    broker_url: str, empty_config: Path
) -> None:
    pytest.importorskip("grpc")
    from tests.grpc_stub import GrpcStub, Reply, StubServer
    from worker._proto.jobs.v1 import jobs_pb2

    stub = GrpcStub()
    server = StubServer(stub)
    server.start()
    try:
        stub.on("GetFeatures", Reply(jobs_pb2.JobFeatures(input_chunk_maximum_size="1M")))
        env = {"EDGE_WORKER_AMQP__URL": broker_url, "EDGE_WORKER_EDGE__URL": stub.url}
        healthy = run("healthcheck", "--config", str(empty_config), env=env)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert healthy.stdout.startswith(f"ok: broker and edge {stub.url} answer")
        assert len(stub.seen("GetFeatures")) == 1
        # The same port given as http://: the answer names the grpc:// URL to use instead.
        env["EDGE_WORKER_EDGE__URL"] = f"http://{stub.target}"
        wrong = run("healthcheck", "--config", str(empty_config), env=env)
        assert wrong.returncode == 1
        assert f'edge.url = "grpc://{stub.target}"' in wrong.stdout
    finally:
        server.stop()
    gone = run("healthcheck", "--config", str(empty_config), env={**env, "EDGE_WORKER_EDGE__URL": stub.url})
    assert gone.returncode == 1
    assert f"edge {stub.url} unreachable" in gone.stdout


def test_submit_to_a_missing_request_queue_says_so_without_a_traceback_or_the_payload(
    broker_url: str, queues: Queues, empty_config: Path
) -> None:
    env = broker_env(broker_url, queues)  # nobody declared these queues: no worker ran
    result = run(
        "submit",
        "--config",
        str(empty_config),
        "--model",
        "m",
        "--version",
        "1",
        "--input",
        "doc:t=PAYLOAD-CANARY-77",
        env=env,
    )
    assert result.returncode == 69, (result.stdout, result.stderr)
    assert f"no queue {queues.queue!r}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "PAYLOAD-CANARY-77" not in result.stdout + result.stderr
