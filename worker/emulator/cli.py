"""`edge-worker emulator`: the emulator in the foreground until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from types import FrameType
from typing import Any

from worker.emulator.config import EmulatorConfig, parse_size
from worker.emulator.server import EdgeEmulator


class _UsageParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(64)  # EX_USAGE, as the interface's exit codes say


def build_parser() -> argparse.ArgumentParser:
    defaults = EmulatorConfig()
    parser = _UsageParser(
        prog="edge-worker emulator",
        description="Serve a local stand-in for a Modzy Edge server: its HTTP/JSON gateway and its gRPC API.",
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port, help="the HTTP face's port; 0 picks a free one")
    parser.add_argument(
        "--grpc-port", type=int, default=None, metavar="P", help="serve the gRPC face too, on P (0 picks a free one)"
    )
    parser.add_argument("--latency", type=float, default=defaults.latency_s, help="seconds one job runs")
    parser.add_argument("--capacity", type=int, default=defaults.capacity, help="jobs at once; 0 = unlimited")
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes)
    parser.add_argument("--chunk-size", default=defaults.chunk_size, help='e.g. "1M" or "512Ki"')
    parser.add_argument("--fail-rate", type=float, default=defaults.fail_rate)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--gateway",
        default=defaults.gateway,
        metavar="VERSION",
        help=f"grpc-gateway version the HTTP face imitates on chunk bodies (default {defaults.gateway}; "
        "before v2.10.1, e.g. v2.0, a base64 string chunk is refused)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGTERM or SIGINT; print one JSON line once listening."""
    args = build_parser().parse_args(argv)
    try:
        config = EmulatorConfig(
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port,
            latency_s=args.latency,
            capacity=args.capacity,
            max_request_bytes=args.max_request_bytes,
            chunk_size=args.chunk_size,
            chunk_size_bytes=parse_size(args.chunk_size),
            fail_rate=args.fail_rate,
            seed=args.seed,
            gateway=args.gateway,
        )
        emulator = EdgeEmulator(config)
    except ValueError as exc:
        print(f"edge-worker emulator: error: {exc}", file=sys.stderr)
        return 64
    except ImportError as exc:
        print(
            f"edge-worker emulator: error: the gRPC face needs grpcio ({exc}); install edge-worker[grpc]",
            file=sys.stderr,
        )
        return 78

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # stop() joins the server threads; doing that inside a signal handler could deadlock.
        threading.Thread(target=emulator.stop, name="edge-emulator-stop", daemon=True).start()

    # Handlers go in before the listening line so a SIGTERM sent right after it is never fatal.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            emulator.start()
        except OSError as exc:
            print(json.dumps({"event": "emulator_bind_failed", "error": str(exc)}), file=sys.stderr)
            return 69
        listening: dict[str, Any] = {"event": "emulator_listening", "url": emulator.url, "port": emulator.port}
        if emulator.grpc_target is not None:
            listening.update(grpc_target=emulator.grpc_target, grpc_port=emulator.grpc_port)
        listening["gateway"] = config.gateway
        print(json.dumps(listening), flush=True)
        emulator.serve_forever()
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
    return 0
