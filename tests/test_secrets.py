"""The broker password from a file or a systemd credential, and never shown: not in logs, not in command output.

A broker user of its own with a long random password makes a leak findable: the test scans every byte the
worker and the commands wrote for it (also URL-quoted), at debug level, and across a refused login.
"""

# pytest hands fixtures in as parameters: a test needing six of them is not a function design smell.
# ruff: noqa: PLR0917

from __future__ import annotations

import secrets
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Producer, ReplyCollector

SHA_REQUEST = {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"cam-1": {"image": b"\x03secret"}}}


@dataclass(frozen=True, slots=True)
class BrokerUser:
    name: str
    password: str


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def distinctive_secret() -> str:
    # Long and random, and with characters that must be quoted in a URL (@ : / % + ?), so that both the raw
    # and the quoted form can be searched for and the worker's URL handling is exercised.
    return f"pw{secrets.token_hex(16)}@:/%+?{secrets.token_hex(8)}"


@pytest.fixture
def broker_user(broker_url: str) -> Iterator[BrokerUser]:
    """A broker user of this test's own, with a distinctive password; deleted afterwards."""
    user = BrokerUser(f"edge-worker-test-{secrets.token_hex(6)}", distinctive_secret())
    rabbitmqctl("add_user", user.name, user.password)
    try:
        rabbitmqctl("set_permissions", "-p", "/", user.name, ".*", ".*", ".*")
        yield user
    finally:
        rabbitmqctl("delete_user", user.name)


def forms(secret: str) -> list[str]:
    """The ways a secret could show up in text: as is, URL-quoted (both styles), JSON-escaped."""
    return sorted(
        {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret), secret.replace("/", "\\/")}
    )


def assert_nowhere(secret: str, text: str, where: str) -> None:
    for form in forms(secret):
        assert form not in text, f"the secret ({form!r}) appears in {where}"
    # Also no long piece of it: a truncated or partly masked copy is still a leak.
    assert secret[:20] not in text, f"the start of the secret appears in {where}"


def command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def url_for(user: BrokerUser, password: str | None) -> str:
    credentials = urllib.parse.quote(user.name, safe="")
    if password is not None:
        credentials += ":" + urllib.parse.quote(password, safe="")
    return f"amqp://{credentials}@127.0.0.1:5672/%2F"


@pytest.mark.parametrize("source", ["password_file", "credentials_directory"])
def test_password_from_a_secret_file_works_and_is_never_shown(
    source: str,
    broker_user: BrokerUser,
    emulator: Any,
    worker_factory: Any,
    producer: Producer,
    collector: ReplyCollector,
    tmp_path: Path,
) -> None:
    api_key = distinctive_secret()  # the other secret of the configuration
    overrides: dict[str, Any] = {"log__level": "debug", "edge__api_key": api_key}
    if source == "password_file":
        secret_file = tmp_path / "amqp_password"
        secret_file.write_text(broker_user.password + "\n")  # as `echo` would write it
        # The URL's own password is wrong: the file must win.
        overrides |= {"amqp__url": url_for(broker_user, "wrong-password"), "amqp__password_file": secret_file}
    else:
        credentials = tmp_path / "credentials"
        credentials.mkdir(mode=0o700)
        (credentials / "amqp_password").write_text(broker_user.password)
        overrides["amqp__url"] = url_for(broker_user, None)
    worker = worker_factory(emulator.url, **overrides)
    if source == "credentials_directory":
        worker.env["CREDENTIALS_DIRECTORY"] = str(tmp_path / "credentials")
    worker.start()

    mid = producer.publish(SHA_REQUEST)
    assert collector.wait_finals(1)[mid][0]["status"] == "COMPLETE"
    assert worker.terminate() == 0
    log = worker.log_path.read_text()
    # Debug really was on, pika's frame-level records included: where a leak would most likely be.
    assert '"level": "debug", "logger": "pika.' in log
    assert len(log.splitlines()) > 50
    assert_nowhere(broker_user.password, log, "the worker's log")
    assert_nowhere(api_key, log, "the worker's log")

    for args in (["check-config"], ["healthcheck"]):
        result = command(args, worker.env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert_nowhere(broker_user.password, result.stdout + result.stderr, f"`edge-worker {args[0]}`")
        assert_nowhere(api_key, result.stdout + result.stderr, f"`edge-worker {args[0]}`")
    shown = command(["check-config"], worker.env).stdout
    assert '"api_key": "****"' in shown
    assert '"password": "****"' in shown


def test_refused_login_never_shows_the_password(
    broker_user: BrokerUser, emulator: Any, worker_factory: Any, tmp_path: Path
) -> None:
    wrong = distinctive_secret()
    secret_file = tmp_path / "amqp_password"
    secret_file.write_text(wrong)
    worker = worker_factory(
        emulator.url,
        amqp__url=url_for(broker_user, None),
        amqp__password_file=secret_file,
        worker__startup_timeout=2,
        log__level="debug",
    )
    worker.start(wait_ready=False)
    assert worker.proc is not None
    assert worker.proc.wait(30) == 69, worker.tail()
    log = worker.log_path.read_text()
    assert "ACCESS_REFUSED" in log  # it got as far as a refused login, which was logged
    assert worker.events("broker_connect_failed")
    assert_nowhere(wrong, log, "the worker's log")

    for args, code in ((["check-config"], 0), (["healthcheck"], 1)):
        result = command(args, worker.env)
        assert result.returncode == code, result.stdout + result.stderr
        assert_nowhere(wrong, result.stdout + result.stderr, f"`edge-worker {args[0]}`")


def test_password_in_the_url_is_masked_everywhere(
    broker_user: BrokerUser, emulator: Any, worker_factory: Any, producer: Producer, collector: ReplyCollector
) -> None:
    # Not the recommended way, but the contract's default URL carries one: it must be masked just the same.
    worker = worker_factory(emulator.url, amqp__url=url_for(broker_user, broker_user.password), log__level="debug")
    worker.start()
    mid = producer.publish(SHA_REQUEST)
    assert collector.wait_finals(1)[mid][0]["status"] == "COMPLETE"
    assert worker.terminate() == 0
    assert_nowhere(broker_user.password, worker.log_path.read_text(), "the worker's log")
    for args in (["check-config"], ["healthcheck"]):
        result = command(args, worker.env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert_nowhere(broker_user.password, result.stdout + result.stderr, f"`edge-worker {args[0]}`")
    assert f"amqp://{broker_user.name}:****@127.0.0.1:5672/%2F" in command(["check-config"], worker.env).stdout
