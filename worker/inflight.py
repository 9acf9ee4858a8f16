"""The daemon's in-flight table: the requests being processed, running or held for an edge slot.

A request is one entry however often the broker delivers it: a redelivery (after a lost connection) with the
message_id of a request still running attaches to it and gets its reply. IOLoop thread only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog

from worker.broker import Delivery
from worker.jobs import JobThreads
from worker.messages import ReplyRoute

log = structlog.get_logger("worker.service")


@dataclass(slots=True, eq=False)
class InFlight:
    """One request being processed; redeliveries of the same message_id attach to it."""

    key: str | None
    deliveries: list[Delivery] = field(default_factory=list)


@dataclass(slots=True, eq=False)
class Start:
    """A delivery handed to a job thread: held (decoded, waiting for an edge slot) or running."""

    entry: InFlight
    delivery: Delivery
    route: ReplyRoute
    received_at: float  # time.monotonic() at receipt: the job's timeout counts from here


class InFlightTable:
    """Every request being processed, and by message_id those that have one."""

    def __init__(self) -> None:
        self._entries: set[InFlight] = set()
        self._by_key: dict[str, InFlight] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def attach(self, key: str | None, delivery: Delivery) -> bool:
        """Join a redelivery to the running request with its message_id; False when there is none."""
        entry = self._by_key.get(key) if key is not None else None
        if entry is None:
            return False
        entry.deliveries.append(delivery)
        log.info("delivery_attached", message_id=key, redelivered=delivery.redelivered)
        return True

    def add(self, key: str | None, delivery: Delivery) -> InFlight:
        """A new request: its entry, in the table until removed."""
        entry = InFlight(key=key, deliveries=[delivery])
        if key is not None:
            self._by_key[key] = entry
        self._entries.add(entry)
        return entry

    def remove(self, entry: InFlight) -> None:
        """The request ended (or went back to the queue): a later delivery of it starts afresh."""
        self._entries.discard(entry)
        if entry.key is not None and self._by_key.get(entry.key) is entry:
            del self._by_key[entry.key]

    def take_back_held(self, threads: JobThreads[Start] | None) -> list[Start]:
        """Take the deliveries no job thread has started yet off the threads and out of the table."""
        held = threads.take_back() if threads is not None else []
        for start in held:
            self.remove(start.entry)
        return held

    def drop_held(self, threads: JobThreads[Start] | None) -> None:
        """The connection is gone: the broker redelivers what never reached a thread, so it must not run here.

        (Those waiting for an edge slot go on, like the running ones: a redelivery with the same message_id
        attaches to them and gets their reply.)
        """
        held = len(self.take_back_held(threads))
        if held:
            log.info("held_deliveries_dropped", deliveries=held, reason="connection lost: the broker redelivers")

    def deliveries(self) -> list[Delivery]:
        """Every delivery of every request in the table."""
        return [delivery for entry in self._entries for delivery in entry.deliveries]

    def clear(self) -> None:
        self._entries.clear()
        self._by_key.clear()


__all__ = ["InFlight", "InFlightTable", "Start"]
