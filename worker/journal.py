"""A small crash-safe journal (sqlite in WAL mode) that makes a redelivered request resume, not restart."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from worker.journal_cap import DEFAULT_MAX_BYTES, WAL_SHARE, SizeCap, size_on_disk

__all__ = ["CHECKPOINT_INTERVAL_S", "DEFAULT_MAX_BYTES", "Journal", "JournalEntry"]

log = structlog.get_logger("worker.journal")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    key          TEXT PRIMARY KEY,
    job_id       TEXT,
    submits      INTEGER NOT NULL DEFAULT 0,
    deliveries   INTEGER NOT NULL DEFAULT 0,
    started_at   REAL NOT NULL,
    reply        BLOB,
    updated_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_updated ON requests (updated_at);
"""

# Columns added after the first schema; a journal file from before gets them on opening.
_ADDED_COLUMNS = {
    "running_by": "TEXT",  # the process running this request now ("<pid>:<random>"), else NULL
    "running_isolated": "INTEGER NOT NULL DEFAULT 0",  # whether it runs as the one suspect (see jobs.py)
    "crashes": "INTEGER NOT NULL DEFAULT 0",  # times a worker process died while running it
    "isolated_crashes": "INTEGER NOT NULL DEFAULT 0",  # ... while running it as the one suspect
    "submitting": "INTEGER NOT NULL DEFAULT 0",  # a submission was sent and its answer not yet recorded
    "submitting_at": "REAL",  # wall time of the last submitting mark (jobs.adopt looks for the job from then)
}
# Each process that opened the journal, and when: a job a dead process submitted was created before the next
# process opened the journal (jobs.adopt bounds its search for a lost submission's job with it).
_OPENINGS_SCHEMA = "CREATE TABLE IF NOT EXISTS openings (token TEXT PRIMARY KEY, opened_at REAL NOT NULL)"
_OPENINGS_KEPT = 1000

# Checkpoints (copying the WAL back into the database, with an fsync) run on a thread of their own, so that no
# request waits behind one: done by whichever writer crossed sqlite's threshold, a checkpoint stalled every
# worker thread on the journal's lock for 5 ms, and for over 100 ms with the disk busy (bench/results/profile.md).
CHECKPOINT_INTERVAL_S = 1.0
# sqlite's own checkpoint stays as a backstop, far above what the thread lets the WAL reach (pages of 4 KiB).
_BACKSTOP_CHECKPOINT_PAGES = 16384

_COLUMNS = "key, job_id, submits, deliveries, started_at, reply, crashes, isolated_crashes, submitting, submitting_at"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    key: str
    job_id: str | None
    submits: int
    deliveries: int
    started_at: float
    reply: bytes | None
    crashes: int = 0
    isolated_crashes: int = 0
    submitting: bool = False  # a process died between sending a submission and recording the edge's answer
    submitting_at: float | None = None  # wall time the submitting mark was set (before the submission was sent)
    running: bool = False  # record_delivery marked it as run by this process (see mark_running_below)


class Journal:
    """Request key → edge job id, submission count, delivery count and the final reply, until expiry.

    It also knows which process is running each request: a redelivered request whose last run belonged to
    a process that is gone was running when that process died, which is how a request that kills the
    worker is told apart from the ones that only happened to run beside it.

    One connection shared by the worker threads behind a lock: every write is a single short statement, and
    WAL with synchronous=NORMAL keeps each commit durable against a process crash (the failure we guard).
    A background thread checkpoints the WAL once a second when something was written (see above).
    """

    def __init__(
        self,
        path: Path,
        *,
        retention_s: float,
        max_bytes: int = DEFAULT_MAX_BYTES,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
    ) -> None:
        _make_private(path)
        self.path = path
        self._retention_s = retention_s
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._closed = False
        self.process_token = f"{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        present = {row[1] for row in self._db.execute("PRAGMA table_info(requests)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in present:
                self._db.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")
        self._db.execute(_OPENINGS_SCHEMA)
        self.opened_at = time.time()
        self._db.execute(
            "INSERT OR REPLACE INTO openings (token, opened_at) VALUES (?, ?)", (self.process_token, self.opened_at)
        )
        self._db.execute(
            "DELETE FROM openings WHERE token NOT IN (SELECT token FROM openings ORDER BY opened_at DESC LIMIT ?)",
            (_OPENINGS_KEPT,),
        )
        page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        # The WAL grows with every commit until a checkpoint: the backstop keeps it within its share of the cap.
        wal_pages = max(16, min(_BACKSTOP_CHECKPOINT_PAGES, int(max_bytes * WAL_SHARE) // page_size))
        self._db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
        self._db.execute(f"PRAGMA journal_size_limit={int(max_bytes * WAL_SHARE)}")
        self._cap = SizeCap(self._db, max_bytes=max_bytes, page_size=page_size)
        self._writes = 0  # commits since the last checkpoint (read and reset by the checkpoint thread)
        self.checkpoints = 0
        self.checkpoint_wakeups = 0
        self._stopping = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, args=(checkpoint_interval_s,), name="journal-checkpoint", daemon=True
        )
        self._checkpointer.start()

    def _checkpoint_loop(self, interval_s: float) -> None:
        try:
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=10)
        except sqlite3.Error as exc:
            # The writers still checkpoint at sqlite's backstop threshold: slower, never unbounded.
            log.error("journal_checkpointer_failed", error=str(exc), path=str(self.path))
            return
        try:
            while not self._stopping.wait(interval_s):
                self.checkpoint_wakeups += 1
                with self._lock:
                    written, self._writes = self._writes, 0
                if not written:
                    continue  # idle: nothing to copy, no disk touched
                try:
                    # TRUNCATE would wait for readers; PASSIVE never blocks a writer, and journal_size_limit
                    # brings the WAL file back under its share of the cap once it is reset.
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                except sqlite3.Error as exc:
                    log.warning("journal_checkpoint_failed", error=str(exc))
                    with self._lock:
                        self._writes += 1  # try again next time
        finally:
            db.close()

    @classmethod
    def in_state_dir(cls, state_dir: str, *, retention_s: float, max_bytes: int = DEFAULT_MAX_BYTES) -> Journal:
        return cls(Path(state_dir) / "journal.sqlite3", retention_s=retention_s, max_bytes=max_bytes)

    def _select(self, key: str) -> JournalEntry | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM requests WHERE key = ?", (key,)).fetchone()
        return None if row is None else JournalEntry(*row)

    def get(self, key: str) -> JournalEntry | None:
        with self._lock:
            return self._select(key)

    def record_delivery(self, key: str, *, mark_running_below: int | None = None) -> JournalEntry:
        """Count one more delivery of this key (creating the entry) and return the entry as it now stands.

        When the entry says a process that no longer exists was running it, that process died with it: the
        crash is counted here. With mark_running_below, an unfinished entry with fewer crashes than that is
        also marked as run by this process (record_running's work in the same commit; entry.running says so).
        """
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO requests (key, deliveries, started_at, updated_at) VALUES (?, 1, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET deliveries = deliveries + 1, updated_at = excluded.updated_at",
                    (key, now, now),
                )
                row = self._db.execute(
                    "SELECT running_by, running_isolated FROM requests WHERE key = ?", (key,)
                ).fetchone()
                if row[0] is not None and not self._alive(row[0]):
                    self._db.execute(
                        "UPDATE requests SET crashes = crashes + 1, isolated_crashes = isolated_crashes + ?, "
                        "running_by = NULL, running_isolated = 0 WHERE key = ?",
                        (1 if row[1] else 0, key),
                    )
                marked = False
                if mark_running_below is not None:
                    marked = (
                        self._db.execute(
                            "UPDATE requests SET running_by = ?, running_isolated = 0 WHERE key = ? AND "
                            "reply IS NULL AND crashes < ? AND (running_by IS NULL OR running_by = ?)",
                            (self.process_token, key, mark_running_below, self.process_token),
                        ).rowcount
                        == 1
                    )
                entry = self._select(key)
                if marked and entry is not None:
                    entry = replace(entry, running=True)
                self._db.execute("COMMIT")
                self._writes += 1
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        assert entry is not None
        return entry

    def _alive(self, token: str) -> bool:
        """Whether the process that wrote this running mark may still be running it."""
        if token == self.process_token:
            return True
        pid_text, _, _ = token.partition(":")
        try:
            pid = int(pid_text)
        except ValueError:
            return False
        if pid == os.getpid():
            return False  # our pid, another token: an earlier process with the same pid (a container restart)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True  # another live worker sharing this state_dir (or a process that reused the pid)

    def _write(self, sql: str, params: tuple[object, ...], *, unless_closed: bool = False) -> int:
        """One single-statement write (its own commit), counted for the checkpoint thread; rows changed."""
        with self._lock:
            if unless_closed and self._closed:
                return 0
            self._writes += 1
            return self._db.execute(sql, params).rowcount

    def record_running(self, key: str, *, isolated: bool) -> None:
        """This process starts running the request: if it dies before record_stopped, the next one knows."""
        self._write(
            "UPDATE requests SET running_by = ?, running_isolated = ?, updated_at = ? WHERE key = ?",
            (self.process_token, 1 if isolated else 0, time.time(), key),
        )

    def record_stopped(self, key: str) -> None:
        """The run ended (finished, failed, or handed back) without the process dying."""
        self._write(
            "UPDATE requests SET running_by = NULL, running_isolated = 0 WHERE key = ? AND running_by = ?",
            (key, self.process_token),
            unless_closed=True,  # a job thread ending after the close: harmless
        )

    def release_all(self) -> int:
        """At a clean exit: the requests this process still runs were handed back, not crashed with."""
        return self._write(
            "UPDATE requests SET running_by = NULL, running_isolated = 0 WHERE running_by = ?", (self.process_token,)
        )

    def record_submitting(self, key: str, submitting: bool = True) -> None:
        """A submission is about to go out (True), or ended without a job (False).

        The edge has no idempotency key: if the process dies after the edge accepted a job but before
        record_job, only this mark (and its time) lets the next delivery look for that job (jobs.adopt).
        """
        if submitting:
            self._write("UPDATE requests SET submitting = 1, submitting_at = ? WHERE key = ?", (time.time(), key))
        else:
            self._write("UPDATE requests SET submitting = 0 WHERE key = ?", (key,))

    def opened_after(self, moment: float) -> float | None:
        """When the first process that opened the journal after `moment` did so (None: none since)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(opened_at) FROM openings WHERE opened_at > ?", (moment,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def claimed(self, job_ids: list[str]) -> set[str]:
        """Which of these edge jobs some journal entry already names."""
        if not job_ids:
            return set()
        marks = ", ".join("?" for _ in job_ids)
        with self._lock:
            rows = self._db.execute(f"SELECT job_id FROM requests WHERE job_id IN ({marks})", tuple(job_ids))
            return {str(row[0]) for row in rows}

    def adopt_job(self, key: str, job_id: str) -> bool:
        """Record a found job as this key's (record_job), unless another entry already names it."""
        with self._lock:
            self._writes += 1
            return (
                self._db.execute(
                    "UPDATE requests SET job_id = ?, submits = submits + 1, submitting = 0, updated_at = ? "
                    "WHERE key = ? AND NOT EXISTS (SELECT 1 FROM requests WHERE job_id = ? AND key != ?)",
                    (job_id, time.time(), key, job_id, key),
                ).rowcount
                == 1
            )

    def record_job(self, key: str, job_id: str) -> None:
        """The edge accepted a job for this key: from now on a redelivery resumes it."""
        self._write(
            "UPDATE requests SET job_id = ?, submits = submits + 1, submitting = 0, updated_at = ? WHERE key = ?",
            (job_id, time.time(), key),
        )

    def record_reply(self, key: str, reply: bytes) -> None:
        """The final reply: a redelivery re-publishes it instead of doing the work again.

        The run has ended, so this process's running mark goes in the same commit (record_stopped's work).
        Room is made first: finished entries go, oldest first, while the journal would pass its cap.
        """
        with self._lock:
            if not self._closed:
                self._writes += self._cap.make_room(len(reply))
        self._write(
            "UPDATE requests SET reply = ?, updated_at = ?, "
            "running_isolated = CASE WHEN running_by = ? THEN 0 ELSE running_isolated END, "
            "running_by = CASE WHEN running_by = ? THEN NULL ELSE running_by END WHERE key = ?",
            (reply, time.time(), self.process_token, self.process_token, key),
        )

    @property
    def evicted(self) -> int:
        """Finished entries dropped to stay under max_bytes, since opening (journal_cap)."""
        return self._cap.evicted

    def size_on_disk(self) -> int:
        """Bytes of the journal's files (database, WAL and shared-memory index) as they stand."""
        return size_on_disk(self.path)

    def forget(self, key: str) -> None:
        self._write("DELETE FROM requests WHERE key = ?", (key,))

    def expire(self, *, now: float | None = None, unfinished_after_s: float = 7200.0) -> int:
        """Drop finished entries older than the retention, and abandoned unfinished ones; returns how many."""
        now = time.time() if now is None else now
        cutoff = now - self._retention_s
        # An unfinished entry may belong to a job still running: keep it at least as long as a delivery can
        # stay unacknowledged, whatever the retention says.
        stale = now - max(self._retention_s, unfinished_after_s)
        return self._write(
            "DELETE FROM requests WHERE (reply IS NOT NULL AND updated_at < ?) OR updated_at < ?", (cutoff, stale)
        )

    def count(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM requests").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._stopping.set()
        if self._checkpointer is not threading.current_thread():
            self._checkpointer.join(timeout=10)
        with self._lock:
            if not self._closed:
                self._closed = True
                self._db.close()


def _make_private(path: Path) -> None:
    """The journal holds replies with model results: directory 0700, files 0600, whatever the umask.

    sqlite creates the -wal and -shm files with the database file's permissions, so creating that file 0600
    before sqlite opens it covers all three.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_uid == os.geteuid():
        os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(f"{path}{suffix}", 0o600)
