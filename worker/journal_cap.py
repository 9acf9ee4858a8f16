"""The journal's size cap on disk (contract §5 worker.journal_max_bytes): finished entries evicted, oldest first.

Finished entries are evicted once the live pages would pass EVICT_AT of the cap, down to EVICT_TO of it: the
slack keeps the WAL and the pages freed-but-not-yet-reused inside the cap, and makes evictions rare batches
instead of one per reply.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import structlog

log = structlog.get_logger("worker.journal")

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
EVICT_AT = 0.80
EVICT_TO = 0.70
_EVICT_BATCH = 8
# Between measurements the live size is estimated from the replies written (plus a row's overhead); it is measured
# again once the estimate has grown by this share of the cap, or would pass EVICT_AT: two pragmas a reply cost
# 17 us, a third of the journal's time per job.
_REMEASURE_SHARE = 0.05
_ROW_OVERHEAD_BYTES = 256
# The WAL is truncated back to this share of the cap after a checkpoint (sqlite keeps its largest size otherwise).
WAL_SHARE = 0.10


class SizeCap:
    """Keeps the journal's live pages under its cap. Not thread-safe: the journal calls it under its lock."""

    def __init__(self, db: sqlite3.Connection, *, max_bytes: int, page_size: int) -> None:
        self._db = db
        self.max_bytes = max_bytes
        self._page_size = page_size
        self.evicted = 0  # finished entries dropped to stay under max_bytes, since opening
        self._live_estimate: int | None = None  # an upper estimate of the live bytes (see _REMEASURE_SHARE)
        self._measured_at = 0

    def _live_bytes(self) -> int:
        pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size

    def make_room(self, incoming: int) -> int:
        """Drop the oldest finished entries until `incoming` more bytes fit under the cap; the commits made.

        Only entries with a final reply go: a running job's entry is never dropped, whatever the cap says.
        """
        incoming += _ROW_OVERHEAD_BYTES
        estimate = self._live_estimate
        if (
            estimate is not None
            and estimate + incoming <= self.max_bytes * EVICT_AT
            and estimate - self._measured_at < self.max_bytes * _REMEASURE_SHARE
        ):
            self._live_estimate = estimate + incoming
            return 0
        live = self._live_bytes()
        if live + incoming <= self.max_bytes * EVICT_AT:
            self._measured_at = live
            self._live_estimate = live + incoming
            return 0
        target = self.max_bytes * EVICT_TO
        dropped = commits = 0
        while self._live_bytes() + incoming > target:
            removed = self._db.execute(
                "DELETE FROM requests WHERE key IN (SELECT key FROM requests WHERE reply IS NOT NULL "
                "ORDER BY updated_at LIMIT ?)",
                (_EVICT_BATCH,),
            ).rowcount
            if removed <= 0:
                break
            dropped += removed
            commits += 1
        live = self._live_bytes()
        self._measured_at = live
        self._live_estimate = live + incoming
        if dropped:
            self.evicted += dropped
            log.info(
                "journal_evicted",
                entries=dropped,
                live_bytes=live,
                max_bytes=self.max_bytes,
            )
        return commits


def size_on_disk(path: Path) -> int:
    """Bytes of the journal's files (database, WAL and shared-memory index) as they stand."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.stat(f"{path}{suffix}").st_size
        except FileNotFoundError:
            continue
    return total
