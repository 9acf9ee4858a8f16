"""EdgeEmulator: one emulated edge, its state served by the HTTP face and, when configured, the gRPC face."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from worker.emulator.config import EmulatorConfig, validate_config
from worker.emulator.http import HttpFace
from worker.emulator.state import EdgeState

if TYPE_CHECKING:
    from worker.emulator.grpc import GrpcFace


class EdgeEmulator:
    """An in-process stand-in for a Modzy Edge server, with fault injection.

    The HTTP face listens on `port` (see `url`); with `grpc_port` set, the gRPC face listens beside it
    (see `grpc_target`). Both serve the same jobs. stop() closes both and keeps the jobs; start() binds the
    same ports again, like an edge that was down for a while.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        validate_config(config)
        self._config = replace(config)
        self._state = EdgeState(self._config)
        self._http = HttpFace(self._state, config.host, config.port)
        self._grpc: GrpcFace | None = None
        if config.grpc_port is not None:
            from worker.emulator.grpc import GrpcFace  # noqa: PLC0415 -- grpcio is the optional [grpc] extra

            self._grpc = GrpcFace(self._state, config.host, config.grpc_port)
        self._server_lock = threading.Lock()
        self._serving = False
        self._started_once = False
        self._stopped = threading.Event()
        self._stopped.set()

    # ----- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in background threads; after stop() it rebinds the same ports."""
        with self._server_lock:
            if self._serving:
                return
            self._http.start()
            if self._grpc is not None:
                try:
                    self._grpc.start()
                except OSError:
                    self._http.stop()
                    raise
            self._serving = True
            self._started_once = True
            self._stopped.clear()

    def stop(self) -> None:
        """Close the listening sockets and every open connection; job state is kept."""
        with self._server_lock:
            if not self._serving:
                return
            self._serving = False
            self._http.stop()
            if self._grpc is not None:
                self._grpc.stop()
            self._stopped.set()

    def serve_forever(self) -> None:
        """Serve until stop() is called (starting first if never started); for the CLI."""
        with self._server_lock:
            start_now = not self._started_once
        if start_now:
            self.start()
        self._stopped.wait()

    def __enter__(self) -> EdgeEmulator:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # ----- addresses -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The HTTP face's bound port (the configured one before the first start)."""
        return self._http.port

    @property
    def url(self) -> str:
        """Base URL of the HTTP face, e.g. "http://127.0.0.1:55000"."""
        return f"http://{_client_host(self._config.host)}:{self._http.port}"

    @property
    def grpc_port(self) -> int | None:
        """The gRPC face's bound port (the configured one before the first start); None without it."""
        return None if self._grpc is None else self._grpc.port

    @property
    def grpc_target(self) -> str | None:
        """Where a gRPC channel connects, e.g. "127.0.0.1:55001"; None without a gRPC face."""
        if self._grpc is None:
            return None
        return f"{_client_host(self._config.host)}:{self._grpc.port}"

    # ----- faults and statistics (also at /_emulator on the HTTP face) ------------------------------

    def set_faults(
        self, *, fail_rate: float | None = None, forget_jobs: bool | None = None, latency_s: float | None = None
    ) -> None:
        """Change fault injection (both faces); forget_jobs=True forgets every job once, like an edge restart."""
        self._state.set_faults(fail_rate=fail_rate, forget_jobs=forget_jobs, latency_s=latency_s)

    def forget_all_jobs(self) -> None:
        """Forget every job as a restarted edge would: later calls about them answer NOT_FOUND."""
        self._state.forget_all_jobs()

    def reset_stats(self) -> None:
        """Zero the counters and start a new list of jobs."""
        self._state.reset_stats()

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset, as a JSON-able dict."""
        return self._state.stats()


def _client_host(host: str) -> str:
    """The address a client on this machine uses for a listening host."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        host = "::1"
    return f"[{host}]" if ":" in host else host
