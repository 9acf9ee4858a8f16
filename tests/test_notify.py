"""The sd_notify client against real AF_UNIX datagram sockets, as systemd would listen."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.notify import SystemdNotifier


def _bind_datagram(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5.0)
    return sock


def _receive(sock: socket.socket) -> bytes:
    return sock.recv(65536)


@pytest.fixture
def path_listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A notify socket at a filesystem path, like /run/systemd/notify."""
    path = str(tmp_path / "notify.sock")
    sock = _bind_datagram(path)
    try:
        yield path, sock
    finally:
        sock.close()


@pytest.fixture
def abstract_listener() -> Iterator[tuple[str, socket.socket]]:
    """A notify socket in the abstract namespace, named with a leading `@` as systemd does."""
    name = f"edge-worker-test-{secrets.token_hex(8)}"
    sock = _bind_datagram(b"\0" + name.encode())
    try:
        yield "@" + name, sock
    finally:
        sock.close()


@pytest.fixture(autouse=True)
def _clean_notify_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("listener_name", ["path_listener", "abstract_listener"])
def test_each_message_arrives_byte_exact(listener_name: str, request: pytest.FixtureRequest) -> None:
    address, sock = request.getfixturevalue(listener_name)
    notifier = SystemdNotifier(address)
    assert notifier.enabled

    notifier.ready()
    assert _receive(sock) == b"READY=1"
    notifier.ready("consuming edge.jobs")
    assert _receive(sock) == b"READY=1\nSTATUS=consuming edge.jobs"
    notifier.status("waiting for the broker")
    assert _receive(sock) == b"STATUS=waiting for the broker"
    notifier.watchdog()
    assert _receive(sock) == b"WATCHDOG=1"
    notifier.stopping()
    assert _receive(sock) == b"STOPPING=1"
    notifier.stopping("draining 3 requests")
    assert _receive(sock) == b"STOPPING=1\nSTATUS=draining 3 requests"
    assert notifier.send_failures == 0


def test_status_is_utf8_and_kept_on_one_line(path_listener: tuple[str, socket.socket]) -> None:
    address, sock = path_listener
    notifier = SystemdNotifier(address)
    notifier.status("edge down\nretrying in 2 s → ok")
    # A newline inside a value would start a new assignment, so it becomes a space.
    assert _receive(sock) == "STATUS=edge down retrying in 2 s → ok".encode()


def test_one_socket_is_kept_open_across_messages(path_listener: tuple[str, socket.socket]) -> None:
    address, sock = path_listener
    notifier = SystemdNotifier(address)
    notifier.watchdog()
    first_sender = notifier._socket
    notifier.watchdog()
    assert notifier._socket is first_sender
    assert first_sender is not None
    assert first_sender.get_inheritable() is False  # SOCK_CLOEXEC: children do not inherit it
    assert [_receive(sock), _receive(sock)] == [b"WATCHDOG=1", b"WATCHDOG=1"]
    notifier.close()
    notifier.watchdog()
    assert _receive(sock) == b"WATCHDOG=1"
    notifier.close()


def test_socket_is_read_from_environment_at_construction(
    monkeypatch: pytest.MonkeyPatch, abstract_listener: tuple[str, socket.socket]
) -> None:
    address, sock = abstract_listener
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = SystemdNotifier()
    monkeypatch.delenv("NOTIFY_SOCKET")  # later changes do not matter
    assert notifier.enabled
    notifier.ready()
    assert _receive(sock) == b"READY=1"


def test_disabled_without_socket_is_a_silent_no_op() -> None:
    for notifier in (SystemdNotifier(), SystemdNotifier("")):
        assert not notifier.enabled
        notifier.ready("x")
        notifier.status("x")
        notifier.watchdog()
        notifier.stopping("x")
        notifier.close()
        assert notifier.send_failures == 0
        assert notifier._socket is None


def test_missing_socket_path_does_not_raise_and_counts_failures(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.enabled
    notifier.ready()
    notifier.status("still here")
    notifier.watchdog()
    notifier.stopping()
    assert notifier.send_failures == 4


def test_unbound_abstract_socket_counts_failures() -> None:
    notifier = SystemdNotifier(f"@edge-worker-test-{secrets.token_hex(8)}-unbound")
    notifier.watchdog()
    assert notifier.send_failures == 1


def test_listener_going_away_is_counted_then_recovers(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    notifier = SystemdNotifier(path)
    first = _bind_datagram(path)
    notifier.watchdog()
    assert _receive(first) == b"WATCHDOG=1"
    first.close()
    os.unlink(path)
    notifier.watchdog()
    assert notifier.send_failures == 1
    second = _bind_datagram(path)  # e.g. the manager re-executed
    try:
        notifier.watchdog()
        assert _receive(second) == b"WATCHDOG=1"
    finally:
        second.close()
    assert notifier.send_failures == 1


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("60000000", None, 30.0),
        ("60000000", "self", 30.0),
        ("1000", None, 0.0005),
        ("60000000", "other", None),
        ("60000000", "not-a-pid", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    elif pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", pid)
    # The watchdog does not depend on a notify socket being configured.
    assert SystemdNotifier().watchdog_interval_s() == expected


def test_importing_the_module_sends_nothing(path_listener: tuple[str, socket.socket]) -> None:
    address, sock = path_listener
    environment = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"}
    subprocess.run([sys.executable, "-c", "import worker.notify"], env=environment, check=True, timeout=60)
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(65536)
