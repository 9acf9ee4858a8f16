"""Where replies meet the callers waiting for them: one entry per request in flight, with bounded memory.

The IO thread calls `on_reply`; any thread waits with `wait_final` or `listen`. Memory stays bounded:
- an entry lives while a `Job` returned by submit for it is alive (a weakref finalizer forgets it), so a
  caller that drops its jobs drops their replies too; replies for correlation ids nobody tracks are
  acknowledged and dropped at once (counted in `dropped_unknown`);
- final replies nobody has claimed yet (by `block_until_complete`, `as_completed` or `get_results`) are
  capped at `max_unclaimed`: past it the oldest unclaimed entry is dropped (counted in `evicted`), and a
  later wait for it raises `UnknownJob`;
A reply whose message_id its entry has seen, or a second final reply for the same correlation id (the
contract allows both), is dropped (`dropped_duplicate`). Reply ids are kept per entry, not globally: a
retry with the same message_id, after the first Job was forgotten, must receive the stored reply the
worker publishes again under its old id.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import msgpack

from worker.client.job import ClientClosed, Job, ReplyTimeout, UnknownJob

DEFAULT_MAX_UNCLAIMED = 10_000


_TOKENS = itertools.count(1)


@dataclass(slots=True)
class _Entry:
    message_id: str
    latest: Job
    token: int = field(default_factory=lambda: next(_TOKENS))  # tells a re-created entry from the one it replaced
    final: Job | None = None
    holders: int = 0
    reply_ids: set[str] = field(default_factory=set)
    listeners: list[queue.SimpleQueue[Job | BaseException]] = field(default_factory=list)


class Replies:
    def __init__(self, *, max_unclaimed: int = DEFAULT_MAX_UNCLAIMED) -> None:
        self._cond = threading.Condition()
        self._entries: dict[str, _Entry] = {}
        self._unclaimed: OrderedDict[str, None] = OrderedDict()
        self._forgotten: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()  # by finalizers, any thread
        self._max_unclaimed = max_unclaimed
        self._closed = False
        self.received = 0
        self.delivered = 0
        self.dropped_unknown = 0
        self.dropped_duplicate = 0
        self.dropped_undecodable = 0
        self.evicted = 0

    # -- bookkeeping --------------------------------------------------------------------------------

    def track(self, job: Job) -> weakref.finalize:  # type: ignore[type-arg]
        """Remember a submitted job until it is garbage collected; a retry with the same id shares the entry.

        Returns the finalizer: calling it forgets the job now (its request never reached the broker).
        """
        with self._cond:
            self._collect_forgotten()
            entry = self._entries.get(job.correlation_id)
            if entry is None:
                # A copy: the entry must not keep the caller's job alive, or its finalizer would never run.
                entry = self._entries[job.correlation_id] = _Entry(message_id=job.message_id, latest=replace(job))
            entry.holders += 1
            token = entry.token
        return weakref.finalize(job, self._forgotten.put, (job.correlation_id, token))

    def _collect_forgotten(self) -> None:
        while True:
            try:
                correlation_id, token = self._forgotten.get_nowait()
            except queue.Empty:
                return
            entry = self._entries.get(correlation_id)
            if entry is None or entry.token != token:
                continue  # dropped already (evicted), and perhaps tracked again since
            entry.holders -= 1
            if entry.holders <= 0:
                del self._entries[correlation_id]
                self._unclaimed.pop(correlation_id, None)

    def tracked(self) -> int:
        with self._cond:
            self._collect_forgotten()
            return len(self._entries)

    def stats(self) -> dict[str, int]:
        with self._cond:
            self._collect_forgotten()
            return {
                "tracked": len(self._entries),
                "unclaimed": len(self._unclaimed),
                "received": self.received,
                "delivered": self.delivered,
                "dropped_unknown": self.dropped_unknown,
                "dropped_duplicate": self.dropped_duplicate,
                "dropped_undecodable": self.dropped_undecodable,
                "evicted": self.evicted,
            }

    # -- the IO thread's side -----------------------------------------------------------------------

    def on_reply(self, properties: Any, body: bytes) -> None:
        """One reply message from the reply queue (called on the IO thread, before it is acknowledged)."""
        try:
            reply = msgpack.unpackb(body, raw=False)
        except (ValueError, msgpack.UnpackException):
            reply = None
        with self._cond:
            self.received += 1
            self._collect_forgotten()
            if not isinstance(reply, dict):
                self.dropped_undecodable += 1
                return
            correlation_id = properties.correlation_id or ""
            entry = self._entries.get(correlation_id)
            if entry is None:
                self.dropped_unknown += 1
                return
            reply_id = properties.message_id
            if entry.final is not None or (reply_id and reply_id in entry.reply_ids):
                self.dropped_duplicate += 1  # seen already, a second final, or an update overtaken by the final
                return
            if reply_id:
                entry.reply_ids.add(reply_id)
            job = Job.from_reply(reply, message_id=entry.message_id, correlation_id=correlation_id)
            entry.latest = job
            if not job.final:
                return
            entry.final = job
            self.delivered += 1
            for listener in entry.listeners:
                listener.put(job)
            entry.listeners.clear()
            self._unclaimed[correlation_id] = None
            while len(self._unclaimed) > self._max_unclaimed:
                oldest, _ = self._unclaimed.popitem(last=False)
                self._entries.pop(oldest, None)
                self.evicted += 1
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for entry in self._entries.values():
                for listener in entry.listeners:
                    listener.put(ClientClosed("the client was closed"))
                entry.listeners.clear()
            self._cond.notify_all()

    # -- the callers' side --------------------------------------------------------------------------

    def _entry(self, job: Job) -> _Entry:
        entry = self._entries.get(job.correlation_id)
        if entry is None:
            raise UnknownJob(
                f"job {job.correlation_id} is not tracked by this client: submitted by another client, or its "
                f"final reply was dropped after more than {self._max_unclaimed} unclaimed final replies"
            )
        return entry

    def latest(self, job: Job) -> Job:
        with self._cond:
            self._collect_forgotten()
            return self._entry(job).latest

    def final_or_none(self, job: Job) -> Job | None:
        with self._cond:
            self._collect_forgotten()
            entry = self._entry(job)
            if entry.final is not None:
                self._unclaimed.pop(job.correlation_id, None)
            return entry.final

    def wait_final(self, job: Job, timeout: float | None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._collect_forgotten()
                entry = self._entry(job)
                if entry.final is not None:
                    self._unclaimed.pop(job.correlation_id, None)
                    return entry.final
                if self._closed:
                    raise ClientClosed("the client was closed")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ReplyTimeout(f"no final reply for job {job.correlation_id} within {timeout:g} s")
                self._cond.wait(remaining)

    def as_completed(self, jobs: Iterable[Job], timeout: float | None) -> Iterator[Job]:
        """Final jobs in the order their replies arrive, each distinct request once."""
        wanted: dict[str, Job] = {}
        for job in jobs:
            wanted.setdefault(job.correlation_id, job)
        inbox: queue.SimpleQueue[Job | BaseException] = queue.SimpleQueue()
        listening: list[_Entry] = []
        with self._cond:
            self._collect_forgotten()
            for correlation_id, job in wanted.items():
                if job.final:
                    inbox.put(job)
                    continue
                entry = self._entry(job)
                if entry.final is not None:
                    inbox.put(entry.final)
                else:
                    entry.listeners.append(inbox)
                    listening.append(entry)
                self._unclaimed.pop(correlation_id, None)
            if self._closed and listening:
                inbox.put(ClientClosed("the client was closed"))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            for done in range(len(wanted)):
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    item = inbox.get(timeout=remaining)
                except queue.Empty:
                    raise ReplyTimeout(
                        f"{len(wanted) - done} of {len(wanted)} jobs had no final reply within {timeout:g} s"
                    ) from None
                if isinstance(item, BaseException):
                    raise item
                with self._cond:
                    self._unclaimed.pop(item.correlation_id, None)
                yield item
        finally:
            with self._cond:
                for entry in listening:
                    if inbox in entry.listeners:
                        entry.listeners.remove(inbox)
