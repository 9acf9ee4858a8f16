"""The sd_notify protocol in pure Python: one datagram per message to `$NOTIFY_SOCKET`.

systemd (and anything else that speaks the protocol) passes the address of an AF_UNIX datagram
socket in `NOTIFY_SOCKET`: a filesystem path, or an abstract address written with a leading `@`.
Each message is a newline-separated list of `KEY=VALUE` assignments (`READY=1`, `STATUS=...`).

Notification is best effort by design: a daemon must not die or stall because its supervisor is
slow or gone, so no method here raises or blocks for long; failures are only counted.
"""

from __future__ import annotations

import os
import socket
import threading

__all__ = ["SystemdNotifier"]

# A send waits at most this long for room in the receiver's queue. systemd's notify socket has a
# deep queue, so a full one means PID 1 is wedged; the daemon's loop must not hang behind it.
_SEND_TIMEOUT_S = 1.0


def _socket_address(socket_path: str) -> str | bytes:
    """Turn a `NOTIFY_SOCKET` value into an address for `sendto`; `@name` is an abstract socket."""
    if socket_path.startswith("@"):
        # Linux abstract namespace: the name starts with a NUL byte and is not NUL-terminated.
        return b"\0" + os.fsencode(socket_path[1:])
    return socket_path


def _one_line(text: str) -> str:
    """Keep a value on one line: a newline would start a new assignment in the protocol."""
    return text.replace("\r", " ").replace("\n", " ")


class SystemdNotifier:
    """Send sd_notify messages to the service manager; every method is a no-op when disabled."""

    __slots__ = ("_address", "_lock", "_socket", "send_failures")

    def __init__(self, socket_path: str | None = None) -> None:
        """Use `socket_path`, or `$NOTIFY_SOCKET` as it is now when None; empty means disabled."""
        if socket_path is None:
            socket_path = os.environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = _socket_address(socket_path) if socket_path else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self.send_failures: int = 0

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        """Tell the manager start-up is complete (`READY=1`), optionally with a status line."""
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        """Set the free-form status shown by `systemctl status` (`STATUS=...`)."""
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """Prove liveness to the watchdog (`WATCHDOG=1`)."""
        self._send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> None:
        """Tell the manager the service is shutting down (`STOPPING=1`)."""
        self._send("STOPPING=1", status)

    def watchdog_interval_s(self) -> float | None:
        """Seconds between `WATCHDOG=1` pings (half of `WATCHDOG_USEC`), or None without a watchdog.

        Read from the environment on each call, as `sd_watchdog_enabled()` does. A `WATCHDOG_PID`
        naming another process means the watchdog is not ours (a child inherited the variables).
        """
        usec_text = os.environ.get("WATCHDOG_USEC", "")
        try:
            usec = int(usec_text)
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid_text = os.environ.get("WATCHDOG_PID", "")
        if pid_text:
            try:
                pid = int(pid_text)
            except ValueError:
                return None
            if pid != os.getpid():
                return None
        # systemd's own advice: ping at half the timeout so one late ping is not fatal.
        return usec / 2 / 1_000_000

    def close(self) -> None:
        """Close the socket; a later message opens a new one."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def _send(self, first: str, status: str | None = None) -> None:
        if self._address is None:
            return
        message = first if status is None else f"{first}\nSTATUS={_one_line(status)}"
        data = message.encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._socket is None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    sock.settimeout(_SEND_TIMEOUT_S)
                    self._socket = sock
                self._socket.sendto(data, self._address)
            except (OSError, ValueError):
                # OSError: no listener, permission, full queue (timeout); ValueError: a path with a
                # NUL byte. Both mean "not delivered", which is counted, never raised.
                self.send_failures += 1
