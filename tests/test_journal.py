"""The journal: what a redelivery needs (job id, reply, counts, crash marks), on disk, bounded, thread-safe."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import worker.journal as journal_module
from tests.conftest import wait_until
from worker.journal import Journal


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "journal.sqlite3"


def test_a_delivery_creates_the_entry_and_each_one_counts(path: Path) -> None:
    journal = Journal(path, retention_s=60)
    first = journal.record_delivery("m1")
    assert (first.key, first.job_id, first.submits, first.deliveries, first.reply) == ("m1", None, 0, 1, None)
    assert journal.record_delivery("m1").deliveries == 2
    assert journal.record_delivery("m2").deliveries == 1
    assert journal.count() == 2


def test_the_job_id_and_the_reply_are_what_a_redelivery_resumes_from(path: Path) -> None:
    journal = Journal(path, retention_s=60)
    journal.record_delivery("m1")
    journal.record_job("m1", "job-a")
    entry = journal.record_delivery("m1")
    assert (entry.job_id, entry.submits, entry.reply) == ("job-a", 1, None)
    journal.record_job("m1", "job-b")  # the edge forgot job-a: resubmitted
    journal.record_reply("m1", b"\x81\xa6status\xa8COMPLETE")
    entry = journal.record_delivery("m1")
    assert (entry.job_id, entry.submits, entry.reply) == ("job-b", 2, b"\x81\xa6status\xa8COMPLETE")


def test_everything_survives_closing_and_reopening(path: Path) -> None:
    journal = Journal(path, retention_s=60)
    journal.record_delivery("m1")
    journal.record_job("m1", "job-a")
    journal.record_reply("m1", b"reply")
    journal.close()
    journal.close()  # closing twice is harmless
    reopened = Journal(path, retention_s=60)
    entry = reopened.get("m1")
    assert entry is not None and (entry.job_id, entry.reply, entry.deliveries) == ("job-a", b"reply", 1)


def test_the_file_is_in_wal_mode(path: Path) -> None:
    Journal(path, retention_s=60).record_delivery("m1")
    other = sqlite3.connect(str(path))
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert Path(str(path) + "-wal").exists()


def test_every_commit_survives_a_killed_process(path: Path) -> None:
    """WAL with synchronous=NORMAL: a commit is in the file before the call returns, whatever happens next."""
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from worker.journal import Journal\n"
        "j = Journal(Path(sys.argv[1]), retention_s=60)\n"
        "j.record_delivery('m1'); j.record_job('m1', 'job-a'); j.record_reply('m1', b'reply')\n"
        "os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", script, str(path)], check=False).returncode == 9
    entry = Journal(path, retention_s=60).get("m1")
    assert entry is not None and (entry.job_id, entry.reply) == ("job-a", b"reply")


def test_expiry_drops_finished_entries_after_the_retention_and_unfinished_ones_much_later(path: Path) -> None:
    journal = Journal(path, retention_s=100)
    for key in ("finished", "unfinished"):
        journal.record_delivery(key)
    journal.record_reply("finished", b"reply")
    written = journal.get("finished")
    assert written is not None
    now = written.started_at
    assert journal.expire(now=now + 50, unfinished_after_s=1000) == 0
    assert journal.expire(now=now + 101, unfinished_after_s=1000) == 1  # finished, past the retention
    assert journal.get("finished") is None and journal.get("unfinished") is not None
    # An unfinished entry may belong to a job still running: kept until unfinished_after_s.
    assert journal.expire(now=now + 999, unfinished_after_s=1000) == 0
    assert journal.expire(now=now + 1001, unfinished_after_s=1000) == 1
    assert journal.count() == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now


def test_the_journal_stays_bounded_under_a_steady_stream(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(journal_module, "time", clock)
    journal = Journal(path, retention_s=10)
    for second in range(100):  # 100 seconds of 20 requests each (one never finishes), expiring as the daemon does
        clock.now += 1
        for n in range(20):
            key = f"r{second}-{n}"
            journal.record_delivery(key)
            if n:
                journal.record_reply(key, b"x" * 100)
        journal.expire(unfinished_after_s=30)
        assert journal.count() <= 11 * 19 + 31  # the retention's worth, not the history


def test_concurrent_use_from_threads_loses_no_update(path: Path) -> None:
    journal = Journal(path, retention_s=60)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for n in range(200):
                journal.record_delivery("shared")
                key = f"t{thread}-{n}"
                journal.record_delivery(key)
                journal.record_running(key, isolated=False)
                journal.record_job(key, f"job-{thread}-{n}")
                journal.record_reply(key, b"reply")
                journal.record_stopped(key)
        except Exception as exc:  # noqa: BLE001 -- a thread's failure is asserted below, not lost
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    shared = journal.get("shared")
    assert shared is not None and shared.deliveries == 8 * 200
    assert journal.count() == 8 * 200 + 1
    entry = journal.get("t7-199")
    assert entry is not None and (entry.job_id, entry.reply, entry.crashes) == ("job-7-199", b"reply", 0)


# -- crash marks ------------------------------------------------------------------------------------------


def test_a_request_running_when_its_process_died_counts_a_crash(path: Path) -> None:
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from worker.journal import Journal\n"
        "j = Journal(Path(sys.argv[1]), retention_s=60)\n"
        "j.record_delivery('poison'); j.record_running('poison', isolated=True)\n"
        "j.record_delivery('done'); j.record_running('done', isolated=False); j.record_stopped('done')\n"
        "os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", script, str(path)], check=False).returncode == 9
    journal = Journal(path, retention_s=60)
    poison = journal.record_delivery("poison")
    assert (poison.deliveries, poison.crashes, poison.isolated_crashes) == (2, 1, 1)
    assert journal.record_delivery("poison").crashes == 1  # counted once: the mark is cleared
    done = journal.record_delivery("done")
    assert (done.deliveries, done.crashes) == (2, 0)


def test_a_mark_of_this_process_or_of_a_live_one_is_not_a_crash(path: Path) -> None:
    journal = Journal(path, retention_s=60)
    journal.record_delivery("m1")
    journal.record_running("m1", isolated=False)
    assert journal.record_delivery("m1").crashes == 0  # still ours: a redelivery while we run it
    other = Journal(path, retention_s=60)
    other.process_token = "1:another-worker"  # pid 1 is alive: another worker sharing the state_dir
    other.record_running("m1", isolated=False)
    assert journal.record_delivery("m1").crashes == 0


def test_our_pid_with_another_token_is_an_earlier_process_that_died(path: Path) -> None:
    """In a container the restarted worker gets the same pid as the one that died."""
    earlier = Journal(path, retention_s=60)
    earlier.record_delivery("m1")
    earlier.record_running("m1", isolated=False)
    later = Journal(path, retention_s=60)
    assert earlier.process_token != later.process_token
    assert later.record_delivery("m1").crashes == 1


def test_a_clean_exit_releases_what_was_handed_back(path: Path) -> None:
    journal = Journal(path, retention_s=60)
    for key in ("a", "b"):
        journal.record_delivery(key)
        journal.record_running(key, isolated=False)
    assert journal.release_all() == 2
    journal.close()
    journal.record_stopped("a")  # a job thread ending after the close is harmless
    later = Journal(path, retention_s=60)
    assert later.record_delivery("a").crashes == 0


def test_a_submission_in_flight_is_remembered_until_the_job_is_recorded(path: Path) -> None:
    journal = Journal(path, retention_s=60)
    journal.record_delivery("m1")
    journal.record_submitting("m1")
    assert journal.record_delivery("m1").submitting
    journal.record_job("m1", "job-a")
    assert not journal.record_delivery("m1").submitting
    journal.record_submitting("m1")
    journal.record_submitting("m1", False)  # the submission failed in-process: no job at the edge
    assert not journal.record_delivery("m1").submitting


def test_a_journal_file_from_before_the_crash_columns_is_upgraded(path: Path) -> None:
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(str(path))
    old.executescript(
        "CREATE TABLE requests (key TEXT PRIMARY KEY, job_id TEXT, submits INTEGER NOT NULL DEFAULT 0, "
        "deliveries INTEGER NOT NULL DEFAULT 0, started_at REAL NOT NULL, reply BLOB, updated_at REAL NOT NULL);"
        "INSERT INTO requests VALUES ('m1', 'job-a', 1, 1, 0, NULL, 0);"
    )
    old.close()
    entry = Journal(path, retention_s=60).record_delivery("m1")
    assert (entry.job_id, entry.deliveries, entry.crashes, entry.submitting) == ("job-a", 2, 0, False)


def test_the_wal_is_checkpointed_in_the_background_not_by_the_writers(path: Path) -> None:
    """Writers never pay for a checkpoint: a thread of the journal's own copies the WAL into the database."""
    quiet = Journal(path, retention_s=60, checkpoint_interval_s=3600)  # its thread stays asleep
    try:
        db_size = path.stat().st_size
        for i in range(300):  # about 1500 WAL frames: past sqlite's default threshold of 1000
            quiet.record_delivery(f"m{i}")
            quiet.record_reply(f"m{i}", b"r" * 200)
        assert path.stat().st_size == db_size  # no writer checkpointed
        assert quiet.checkpoints == 0
    finally:
        quiet.close()
    journal = Journal(path, retention_s=60, checkpoint_interval_s=0.05)
    try:
        db_size = path.stat().st_size
        for i in range(300, 600):
            journal.record_delivery(f"m{i}")
            journal.record_reply(f"m{i}", b"r" * 200)
        wait_until(
            lambda: journal.checkpoints >= 1 and path.stat().st_size > db_size, 10, what="a background checkpoint"
        )
        other = sqlite3.connect(str(path))
        assert other.execute("SELECT COUNT(*) FROM requests WHERE reply IS NOT NULL").fetchone()[0] == 600
        other.close()
    finally:
        journal.close()
    assert not journal._checkpointer.is_alive()


def test_an_idle_journal_does_not_checkpoint(path: Path) -> None:
    journal = Journal(path, retention_s=60, checkpoint_interval_s=0.01)
    try:
        journal.record_delivery("m1")
        wait_until(lambda: journal.checkpoints == 1, 10, what="the checkpoint of the one write")
        woken = journal.checkpoint_wakeups
        wait_until(lambda: journal.checkpoint_wakeups >= woken + 10, 10, what="ten idle wake-ups")
        assert journal.checkpoints == 1  # woke ten times with nothing written: no checkpoint
    finally:
        journal.close()


def test_a_delivery_can_mark_the_run_in_the_same_commit(path: Path) -> None:
    """record_delivery(mark_running_below=n) does record_running's work, except for a suspect or a finished one."""
    journal = Journal(path, retention_s=60)
    first = journal.record_delivery("fresh", mark_running_below=2)
    assert first.crashes == 0 and first.running
    # Each new Journal is a restarted process (our pid, a new token): the one before died running "fresh".
    second = Journal(path, retention_s=60).record_delivery("fresh", mark_running_below=2)
    assert second.crashes == 1 and second.running  # one crash, below 2: marked
    third = Journal(path, retention_s=60).record_delivery("fresh", mark_running_below=2)
    assert third.crashes == 2 and not third.running  # a suspect: marked only when its turn comes
    stored = sqlite3.connect(str(path)).execute("SELECT running_by FROM requests WHERE key = 'fresh'").fetchone()
    assert stored == (None,)
    journal.record_delivery("done")
    journal.record_reply("done", b"reply")
    assert not journal.record_delivery("done", mark_running_below=2).running
    assert not journal.record_delivery("plain").running  # without the argument, nothing is marked


def test_the_reply_takes_off_this_processs_running_mark_and_no_one_elses(path: Path) -> None:
    journal = Journal(path, retention_s=60)
    journal.record_delivery("ours", mark_running_below=2)
    journal.record_reply("ours", b"reply")
    later = Journal(path, retention_s=60)
    later.process_token = "999999999:new"
    journal.close()
    assert later.record_delivery("ours").crashes == 0  # finished: not a crash, though the process is gone
    other = Journal(path, retention_s=60)
    other.process_token = "1:another-worker"  # pid 1 is alive
    other.record_delivery("theirs")
    other.record_running("theirs", isolated=True)
    later.record_reply("theirs", b"reply")
    row = (
        sqlite3.connect(str(path))
        .execute("SELECT running_by, running_isolated FROM requests WHERE key = 'theirs'")
        .fetchone()
    )
    assert row == ("1:another-worker", 1)


def test_a_delivery_does_not_take_the_mark_of_a_live_process(path: Path) -> None:
    """Two workers sharing a state_dir: the one that did not run it must not take over (or later clear) it."""
    other = Journal(path, retention_s=60)
    other.process_token = "1:another-worker"  # pid 1 is alive
    other.record_delivery("k")
    other.record_running("k", isolated=False)
    journal = Journal(path, retention_s=60)
    try:
        entry = journal.record_delivery("k", mark_running_below=2)
        assert not entry.running and entry.crashes == 0
        row = sqlite3.connect(str(path)).execute("SELECT running_by FROM requests WHERE key = 'k'").fetchone()
        assert row == ("1:another-worker",)
    finally:
        journal.close()
        other.close()


def test_the_journal_stays_under_its_cap_dropping_the_oldest_finished_entries(path: Path) -> None:
    cap = 2 * 1024 * 1024
    journal = Journal(path, retention_s=3600, max_bytes=cap)
    journal.record_delivery("running")  # a job still running: no reply, never dropped
    journal.record_job("running", "job-r")
    reply = bytes(range(256)) * 80  # 20 KiB, incompressible enough for sqlite's pages
    largest = 0
    for n in range(400):  # 8 MiB of replies through a 2 MiB journal
        key = f"m{n:04d}"
        journal.record_delivery(key)
        journal.record_reply(key, reply)
        largest = max(largest, journal.size_on_disk())
    assert largest <= cap, f"journal reached {largest} bytes on disk, cap {cap}"
    assert journal.evicted > 0
    kept = sorted(k for k in (f"m{n:04d}" for n in range(400)) if journal.get(k) is not None)
    assert kept, "the newest replies must still be there"
    assert kept == [f"m{n:04d}" for n in range(400 - len(kept), 400)], "eviction must take the oldest first"
    running = journal.get("running")
    assert running is not None and running.job_id == "job-r"


def test_without_pressure_nothing_is_evicted(path: Path) -> None:
    journal = Journal(path, retention_s=3600, max_bytes=64 * 1024 * 1024)
    for n in range(50):
        journal.record_delivery(f"m{n}")
        journal.record_reply(f"m{n}", b"x" * 1000)
    assert journal.evicted == 0 and journal.count() == 50


def test_its_files_are_private_whatever_the_umask(path: Path) -> None:
    old = os.umask(0o022)
    try:
        journal = Journal(path, retention_s=60)
        journal.record_delivery("m1")
        journal.record_reply("m1", b"reply")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for suffix in ("", "-wal", "-shm"):
        file = Path(f"{path}{suffix}")
        assert file.exists(), file
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, (file, oct(file.stat().st_mode))


def test_an_existing_open_journal_is_made_private(path: Path) -> None:
    path.parent.mkdir(parents=True)
    os.chmod(path.parent, 0o755)
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    Journal(path, retention_s=60).record_delivery("m1")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
