"""Capped exponential backoff with full jitter, shared by every retry loop (broker, edge, publishing)."""

from __future__ import annotations

import random

DEFAULT_BASE_S = 0.1
DEFAULT_CAP_S = 5.0


def backoff_delay(attempt: int, *, base_s: float = DEFAULT_BASE_S, cap_s: float = DEFAULT_CAP_S) -> float:
    """Capped exponential backoff with full jitter (attempt counts from 1)."""
    return random.uniform(0, min(cap_s, base_s * (2 ** (attempt - 1))))
