"""A local stand-in for a Modzy Edge server, for trying the worker, its tests and benchmarks.

One EdgeState (state.py: jobs, slots, the fake model, faults, statistics) behind two faces: the HTTP/JSON
gateway (http.py) and the gRPC API the edge SDK speaks (grpc.py, with the [grpc] extra). server.py ties
them into EdgeEmulator; cli.py is `edge-worker emulator`.
"""

from worker.emulator.cli import main
from worker.emulator.config import EmulatorConfig
from worker.emulator.server import EdgeEmulator

__all__ = ["EdgeEmulator", "EmulatorConfig", "main"]
