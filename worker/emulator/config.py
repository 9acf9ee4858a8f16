"""The emulator's settings and the few rules that check them."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# grpc-gateway generations: from this version on, a chunk body may be a JSON string of base64.
_BASE64_CHUNKS_SINCE = (2, 10, 1)
_GATEWAY_PATTERN = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
_SIZE_PATTERN = re.compile(r"(\d+)\s*([kmgt]?)(i?b?)", re.IGNORECASE)


@dataclass
class EmulatorConfig:
    """Settings of one emulated edge server."""

    host: str = "127.0.0.1"
    port: int = 55000  # the HTTP/JSON gateway face; 0 = pick a free port
    grpc_port: int | None = None  # the gRPC face; 0 = pick a free port, None = no gRPC face
    latency_s: float = 0.05  # how long one job runs once it has a slot
    capacity: int = 8  # jobs running at once; further jobs wait in SUBMITTED; 0 = unlimited
    max_request_bytes: int = 4 * 1024 * 1024  # like a stock gRPC server's receive limit (both faces)
    chunk_size: str = "1M"  # reported as inputChunkMaximumSize in /api/jobs/features
    chunk_size_bytes: int = 1_000_000  # the limit actually enforced on one chunk body's decoded bytes
    # "identifier:version" known to the edge; "sleep" runs for the seconds given in its input "seconds".
    models: tuple[str, ...] = ("ed542963de:1.0.1", "sha256:1.0.0", "sleep:1.0.0")
    fail_rate: float = 0.0  # share of API calls answered UNAVAILABLE (fault injection, both faces)
    seed: int | None = None
    # The grpc-gateway version the HTTP face imitates on chunk bodies: before v2.10.1 a JSON base64 string
    # is refused (only a JSON array of byte values is taken), from v2.10.1 on both are taken.
    gateway: str = "v2.15.2"


def gateway_takes_base64_chunks(gateway: str) -> bool:
    """Whether a grpc-gateway of this version binds a JSON base64 string to a bytes body field."""
    return _gateway_version(gateway) >= _BASE64_CHUNKS_SINCE


def _gateway_version(gateway: str) -> tuple[int, int, int]:
    match = _GATEWAY_PATTERN.fullmatch(gateway.strip())
    if match is None:
        raise ValueError(f"gateway {gateway!r} must be a grpc-gateway version such as v2.0 or v2.15.2")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def split_model(model: str) -> tuple[str, str]:
    identifier, colon, version = model.partition(":")
    if not (colon and identifier and version):
        raise ValueError(f"model {model!r} must be written identifier:version")
    return identifier, version


def validate_config(config: EmulatorConfig) -> None:
    """Raise ValueError naming the first setting that is out of range."""
    if not 0 <= config.port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {config.port}")
    if config.grpc_port is not None and not 0 <= config.grpc_port <= 65535:
        raise ValueError(f"grpc_port must be between 0 and 65535 (or None), got {config.grpc_port}")
    if not (math.isfinite(config.latency_s) and config.latency_s >= 0):
        raise ValueError(f"latency_s must be a finite number >= 0, got {config.latency_s}")
    if config.capacity < 0:
        raise ValueError(f"capacity must be >= 0, got {config.capacity}")
    if config.max_request_bytes <= 0:
        raise ValueError(f"max_request_bytes must be > 0, got {config.max_request_bytes}")
    if config.chunk_size_bytes <= 0:
        raise ValueError(f"chunk_size_bytes must be > 0, got {config.chunk_size_bytes}")
    if not 0.0 <= config.fail_rate <= 1.0:
        raise ValueError(f"fail_rate must be between 0 and 1, got {config.fail_rate}")
    for model in config.models:
        split_model(model)
    _gateway_version(config.gateway)


def parse_size(text: str) -> int:
    """Bytes in a size like "1M" (powers of 1000) or "1Mi"/"1MB" (powers of 1024, as the SDK reads them)."""
    match = _SIZE_PATTERN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/G/T unit")
    number, prefix, suffix = int(match[1]), match[2].lower(), match[3]
    if not prefix:
        return number
    base = 1024 if suffix else 1000
    multiplier: int = base ** ("kmgt".index(prefix) + 1)
    return number * multiplier
