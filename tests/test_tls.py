"""amqps:// with real TLS handshakes: stunnel in front of the local broker, throwaway certificates.

The worker must verify the server by default (CA and host name), refuse a server it cannot verify, and
present a client certificate when the server asks for one (mutual TLS).
"""

# pytest hands fixtures in as parameters: a test needing six of them is not a function design smell.
# ruff: noqa: PLR0917

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Producer, ReplyCollector
from tests.tlskit import StunnelFront, TlsFiles, make_tls_files, stunnel_binary

SHA_REQUEST = {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": {"cam-1": {"image": b"\x00tls"}}}


@pytest.fixture(scope="module")
def stunnel() -> str:
    binary = stunnel_binary()
    if binary is None:
        reason = "stunnel is not installed (Debian package: stunnel4)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it")
        pytest.skip(reason)
    return binary


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_front(
    stunnel: str, tls_files: TlsFiles, broker_url: str, tmp_path: Path
) -> Iterator[Callable[..., StunnelFront]]:
    """Start stunnel fronts for the local broker; all are stopped at teardown."""
    parts = urllib.parse.urlsplit(broker_url)
    backend = (parts.hostname or "127.0.0.1", parts.port or 5672)
    started: list[StunnelFront] = []

    def start(*, require_client_cert: bool = False) -> StunnelFront:
        front = StunnelFront(stunnel, tmp_path, tls_files, backend=backend, require_client_cert=require_client_cert)
        started.append(front)
        return front.start()

    yield start
    for front in started:
        front.stop()


def amqps_url(front: StunnelFront, host: str = "localhost") -> str:
    return f"amqps://guest:guest@{host}:{front.port}/%2F"


def healthcheck(env_overrides: dict[str, str], edge_url: str) -> subprocess.CompletedProcess[str]:
    """`edge-worker healthcheck` configured by the environment only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
    env["EDGE_WORKER_EDGE__URL"] = edge_url
    env.update({f"EDGE_WORKER_{k.upper()}": v for k, v in env_overrides.items()})
    return subprocess.run(
        [sys.executable, "-m", "worker", "healthcheck"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_refused_at_startup(worker: Any, front: StunnelFront, *, expect_in_reason: str) -> None:
    """The worker never got a broker session through this front and gave up with exit 69, saying why."""
    worker.start(wait_ready=False)
    assert worker.proc is not None
    assert worker.proc.wait(30) == 69, worker.tail()
    assert worker.events("broker_connect_failed"), worker.tail()
    assert any(expect_in_reason in json.dumps(line) for line in worker.lines()), worker.tail()
    assert not worker.events("broker_ready")
    assert "accepted connection" in front.log()  # the attempt did reach the TLS listener


def test_job_completes_through_a_verified_tls_connection(
    tls_front: Callable[..., StunnelFront],
    tls_files: TlsFiles,
    emulator: Any,
    worker_factory: Any,
    producer: Producer,
    collector: ReplyCollector,
) -> None:
    front = tls_front()
    worker = worker_factory(emulator.url, amqp__url=amqps_url(front), amqp__tls_ca_file=tls_files.ca).start()
    [ready] = worker.events("broker_ready")
    assert ready["url"] == f"amqps://guest:****@localhost:{front.port}/%2F"
    mid = producer.publish(SHA_REQUEST)
    assert collector.wait_finals(1)[mid][0]["status"] == "COMPLETE"
    # The worker's AMQP session really went through stunnel's TLS listener to the broker.
    log = front.log()
    assert "Service [amqps] accepted connection from 127.0.0.1" in log
    assert "connected remote server" in log
    assert worker.terminate() == 0

    ok = healthcheck({"amqp__url": amqps_url(front), "amqp__tls_ca_file": str(tls_files.ca)}, emulator.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.parametrize("trusted", ["other-ca", "system-store"])
def test_untrusted_server_certificate_is_refused(
    trusted: str, tls_front: Callable[..., StunnelFront], tls_files: TlsFiles, emulator: Any, worker_factory: Any
) -> None:
    front = tls_front()
    overrides: dict[str, Any] = {"amqp__url": amqps_url(front), "worker__startup_timeout": 2}
    if trusted == "other-ca":
        overrides["amqp__tls_ca_file"] = tls_files.other_ca
    # Without tls_ca_file the system's CAs apply, and none of them signed the test server's certificate.
    worker = worker_factory(emulator.url, **overrides)
    assert_refused_at_startup(worker, front, expect_in_reason="CERTIFICATE_VERIFY_FAILED")


def test_server_host_name_is_verified(
    tls_front: Callable[..., StunnelFront], tls_files: TlsFiles, emulator: Any
) -> None:
    front = tls_front()
    # The certificate names localhost only; the right CA does not make 127.0.0.1 acceptable.
    result = healthcheck(
        {"amqp__url": amqps_url(front, host="127.0.0.1"), "amqp__tls_ca_file": str(tls_files.ca)}, emulator.url
    )
    assert result.returncode == 1, result.stdout + result.stderr
    # One line, naming the broker only (the edge answers), with the verification error.
    assert result.stdout == (
        f"unhealthy: broker amqps://guest:****@127.0.0.1:{front.port}/%2F unreachable (SSLCertVerificationError)\n"
    )


def test_tls_verify_false_accepts_an_unverifiable_server(
    tls_front: Callable[..., StunnelFront], tls_files: TlsFiles, emulator: Any
) -> None:
    front = tls_front()
    overrides = {"amqp__url": amqps_url(front, host="127.0.0.1"), "amqp__tls_ca_file": str(tls_files.other_ca)}
    refused = healthcheck(overrides, emulator.url)
    assert refused.returncode == 1, refused.stdout
    accepted = healthcheck({**overrides, "amqp__tls_verify": "false"}, emulator.url)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr


def test_mutual_tls_presents_the_client_certificate(
    tls_front: Callable[..., StunnelFront],
    tls_files: TlsFiles,
    emulator: Any,
    worker_factory: Any,
    producer: Producer,
    collector: ReplyCollector,
) -> None:
    front = tls_front(require_client_cert=True)
    tls = {"amqp__url": amqps_url(front), "amqp__tls_ca_file": tls_files.ca}
    client = {"amqp__tls_cert_file": tls_files.client_cert, "amqp__tls_key_file": tls_files.client_key}

    worker = worker_factory(emulator.url, **tls, **client).start()
    mid = producer.publish(SHA_REQUEST)
    assert collector.wait_finals(1)[mid][0]["status"] == "COMPLETE"
    assert "CN=edge-worker-client" in front.log()  # stunnel saw and verified our certificate
    assert worker.terminate() == 0

    # Without the client certificate the server ends the handshake and the worker never connects.
    bare = worker_factory(emulator.url, worker__startup_timeout=2, **tls)
    bare.start(wait_ready=False)
    assert bare.proc is not None
    assert bare.proc.wait(30) == 69, bare.tail()
    assert bare.events("broker_connect_failed")
    assert not bare.events("broker_ready")
    assert "peer did not return a certificate" in front.log()


def test_the_workers_own_log_line_names_the_tls_failure(
    tls_front: Callable[..., StunnelFront], tls_files: TlsFiles, emulator: Any, worker_factory: Any
) -> None:
    front = tls_front()
    worker = worker_factory(
        emulator.url,
        amqp__url=amqps_url(front),
        amqp__tls_ca_file=tls_files.other_ca,
        worker__startup_timeout=1,
    )
    worker.start(wait_ready=False)
    assert worker.proc is not None
    worker.proc.wait(30)
    failures = worker.events("broker_connect_failed")
    assert failures, worker.tail()
    assert "CERTIFICATE_VERIFY_FAILED" in failures[0]["reason"], failures[0]


# -- an https:// edge ---------------------------------------------------------------------------------


def test_an_https_edge_is_verified_against_requests_ca_bundle_not_the_environments(
    stunnel: str, tls_files: TlsFiles, emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker calls the edge through the pool requests' adapter made; it must trust what requests trusts.

    requests verifies against its own CA bundle (certifi); OpenSSL's default store would also take
    SSL_CERT_FILE from the environment. With the test CA there, an edge whose certificate only that CA signs
    must still be refused, as requests itself refuses it.
    """
    import requests

    from worker.edge import HttpEdgeClient

    parts = urllib.parse.urlsplit(emulator.url)
    front = StunnelFront(stunnel, tmp_path, tls_files, backend=(parts.hostname or "127.0.0.1", parts.port or 80))
    front.start()
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls_files.ca))
        url = f"https://localhost:{front.port}"
        with pytest.raises(requests.exceptions.SSLError):  # requests' own verdict, for comparison
            session = requests.Session()
            session.trust_env = False
            session.get(url + "/api/jobs/features", timeout=10)
        answers, why = HttpEdgeClient(base_url=url, request_timeout_s=10, max_attempts=1).answers()
        assert not answers
        assert "TLS" in why and "certificate verify failed" in why, why
    finally:
        front.stop()


# -- the producer API and `edge-worker submit` over TLS (the same settings as the worker) ---------------


def test_the_client_uses_the_workers_tls_settings_including_a_client_certificate(
    tls_front: Callable[..., StunnelFront], tls_files: TlsFiles, emulator: Any, worker_factory: Any
) -> None:
    from worker.client import BrokerUnreachable, EdgeWorkerClient

    front = tls_front(require_client_cert=True)
    worker = worker_factory(
        emulator.url,
        amqp__url=amqps_url(front),
        amqp__tls_ca_file=tls_files.ca,
        amqp__tls_cert_file=tls_files.client_cert,
        amqp__tls_key_file=tls_files.client_key,
    ).start()
    queue = worker.env["EDGE_WORKER_AMQP__QUEUE"]
    with EdgeWorkerClient(
        amqps_url(front),
        queue=queue,
        tls_ca_file=str(tls_files.ca),
        tls_cert_file=str(tls_files.client_cert),
        tls_key_file=str(tls_files.client_key),
    ) as client:
        final = client.jobs.block_until_complete(client.jobs.submit_embedded("sha256", "1.0.0", {"x": b"tls"}))
    assert final.status == "COMPLETE"
    with pytest.raises(BrokerUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
        EdgeWorkerClient(amqps_url(front), queue=queue, tls_ca_file=str(tls_files.other_ca))
    with pytest.raises(BrokerUnreachable):  # no client certificate: the server ends the handshake
        EdgeWorkerClient(amqps_url(front), queue=queue, tls_ca_file=str(tls_files.ca))


def test_submit_connects_as_run_does_tls_and_the_url_list(
    tls_front: Callable[..., StunnelFront], tls_files: TlsFiles, emulator: Any, worker_factory: Any
) -> None:
    front = tls_front(require_client_cert=True)
    tls = {
        "amqp__tls_ca_file": str(tls_files.ca),
        "amqp__tls_cert_file": str(tls_files.client_cert),
        "amqp__tls_key_file": str(tls_files.client_key),
    }
    # The first URL answers nothing: the worker and submit both go on to the TLS one.
    urls = f"amqps://guest:guest@localhost:1/%2F,{amqps_url(front)}"
    worker = worker_factory(emulator.url, amqp__url=urls, **tls).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_WORKER_")}
    env.update({k: v for k, v in worker.env.items() if k.startswith("EDGE_WORKER_")})
    command = [sys.executable, "-m", "worker", "submit", "--model", "sha256", "--version", "1.0.0"]
    result = subprocess.run(
        [*command, "--input", "cam-1:image=tls-submit", "--wait", "--timeout", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout, result.stderr)
    reply = json.loads(result.stdout)
    assert reply["status"] == "COMPLETE"
    assert reply["results"]["cam-1"]["inputs"]["image"]["size"] == len("tls-submit")
    assert front.log().count("CN=edge-worker-client") >= 2  # the worker's and submit's certificate

    # Without the client certificate, submit cannot connect either: exit 69, naming the brokers.
    env.pop("EDGE_WORKER_AMQP__TLS_CERT_FILE")
    env.pop("EDGE_WORKER_AMQP__TLS_KEY_FILE")
    bare = subprocess.run(
        [*command, "--input", "a:b=c"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert bare.returncode == 69, (bare.stdout, bare.stderr)
    assert f"localhost:{front.port}" in bare.stderr and "localhost:1" in bare.stderr
    assert "guest:guest" not in bare.stderr
