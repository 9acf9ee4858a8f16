"""Throwaway TLS material and a stunnel TLS front for the local broker, for the TLS tests.

The certificates are made with the `openssl` command (the venv has no `cryptography`): a CA, a server
certificate for `localhost` signed by it, a client certificate signed by it (mutual TLS), and a second,
unrelated CA that must not be trusted. stunnel runs in the foreground as a child process, accepting TLS on
a free local port and forwarding the plain bytes to the broker's AMQP port.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

# A day is plenty for a test run; short-lived material cannot be mistaken for something real.
_DAYS = "1"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files for one test session."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", _DAYS, "-subj", f"/CN=edge-worker test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return key, cert


def _make_leaf(directory: Path, name: str, *, ca_key: Path, ca_cert: Path, extensions: str) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", _DAYS, "-extfile", str(ext_file),
        cwd=directory,
    )  # fmt: skip
    return key, cert


def make_tls_files(directory: Path) -> TlsFiles:
    """Create the CA, the server and client certificates, and an unrelated CA in `directory`."""
    ca_key, ca_cert = _make_ca(directory, "ca")
    _other_key, other_ca = _make_ca(directory, "other-ca")
    # Only the DNS name: connecting to 127.0.0.1 must then fail hostname verification.
    server_key, server_cert = _make_leaf(
        directory,
        "localhost",
        ca_key=ca_key,
        ca_cert=ca_cert,
        extensions="subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    client_key, client_cert = _make_leaf(
        directory,
        "edge-worker-client",
        ca_key=ca_key,
        ca_cert=ca_cert,
        extensions="extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
    return TlsFiles(ca_cert, server_cert, server_key, client_cert, client_key, other_ca)


def stunnel_binary() -> str | None:
    """The stunnel executable (Debian's package `stunnel4` installs both names), or None."""
    return shutil.which("stunnel") or shutil.which("stunnel4")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class StunnelFront:
    """stunnel in the foreground: TLS on 127.0.0.1:<port>, plain TCP to the broker behind it."""

    def __init__(
        self,
        binary: str,
        directory: Path,
        files: TlsFiles,
        *,
        backend: tuple[str, int],
        require_client_cert: bool = False,
    ) -> None:
        self.port = free_port()
        self.log_path = directory / f"stunnel-{self.port}.log"
        self.config_path = directory / f"stunnel-{self.port}.conf"
        lines = [
            "foreground = yes",
            "pid =",  # no pid file: the test owns the process
            f"output = {self.log_path}",
            "debug = info",  # logs each accepted connection and each handshake failure
            "[amqps]",
            f"accept = 127.0.0.1:{self.port}",
            f"connect = {backend[0]}:{backend[1]}",
            f"cert = {files.server_cert}",
            f"key = {files.server_key}",
        ]
        if require_client_cert:
            # verify = 2: a client certificate is required and must chain to CAfile.
            lines += ["verify = 2", f"CAfile = {files.ca}"]
        self.config_path.write_text("\n".join(lines) + "\n")
        self._binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> StunnelFront:
        self.proc = subprocess.Popen(
            [self._binary, str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C"},
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stunnel exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"stunnel did not listen on {self.port}: {self.log()[-2000:]}") from None
                time.sleep(0.02)  # sleep-ok: poll interval of a deadline-bounded wait for the listener

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
