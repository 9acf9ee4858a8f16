"""worker.journal_max_bytes and the journal's privacy, through a real worker process (contract §4, §5)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from tests.conftest import Producer, ReplyCollector
from worker.emulator import EdgeEmulator


def test_a_worker_keeps_its_journal_under_the_cap_and_private(
    emulator: EdgeEmulator, worker_factory: Any, producer: Producer, collector: ReplyCollector, tmp_path: Path
) -> None:
    cap = 1 << 20  # the smallest cap allowed; 4 x amqp.max_message_bytes must fit in it
    state = tmp_path / "state"
    old_umask = os.umask(0o022)  # the worker must not depend on the umask it inherits
    try:
        worker_factory(
            emulator.url,
            state_dir=state,
            amqp__max_message_bytes=65536,
            worker__journal_max_bytes=cap,
            worker__concurrency=4,
        ).start()
    finally:
        os.umask(old_umask)
    # 150 replies of about 20 KiB each (10 sources, results included): 3 MiB of replies through a 1 MiB journal.
    sources = {f"s{n}": {"image": os.urandom(1500)} for n in range(10)}
    request = {"model": {"identifier": "sha256", "version": "1.0.0"}, "sources": sources}
    ids = [producer.publish(request) for _ in range(150)]
    finals = collector.wait_finals(len(ids), timeout_s=90)
    assert sorted(finals) == sorted(ids)
    assert all(replies[0]["status"] == "COMPLETE" for replies in finals.values())
    files = [state / f"journal.sqlite3{suffix}" for suffix in ("", "-wal", "-shm")]
    size = sum(f.stat().st_size for f in files if f.exists())
    assert size <= cap, f"journal is {size} bytes on disk, cap {cap}"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for f in files:
        if f.exists():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
