"""What the worker says of itself: the STATUS= line its service manager shows, and why it is not consuming
(the consuming gauge and /healthz)."""

from __future__ import annotations

from collections.abc import Callable

from worker.broker import BrokerLink
from worker.inflight import InFlightTable
from worker.jobs import EdgeGate
from worker.notify import SystemdNotifier


class StatusReport:
    """The daemon's state in a few words, sent to the service manager when it changes."""

    def __init__(
        self,
        *,
        notifier: SystemdNotifier,
        link: BrokerLink,
        gate: EdgeGate,
        inflight: InFlightTable,
        queue: str,
        edge_url: str,
        draining: Callable[[], bool],
    ) -> None:
        self._notifier = notifier
        self._link = link
        self._gate = gate
        self._inflight = inflight
        self._queue = queue
        self._edge_url = edge_url
        self._draining = draining
        self._last: str | None = None  # the last STATUS= sent

    def line(self) -> str:
        """The STATUS= line for the state as it is now."""
        if self._draining():
            return f"draining: {len(self._inflight)} requests in flight"
        if not self._link.ready:
            return "waiting for the broker"
        if not self._gate.is_up:
            return f"edge unreachable at {self._edge_url}: intake paused"
        return f"consuming {self._queue}: {len(self._inflight)} in flight"

    def say(self, status: str) -> None:
        """Send this STATUS= line."""
        self._last = status
        self._notifier.status(status)

    def say_current(self) -> None:
        self.say(self.line())

    def refresh(self) -> None:
        """Send the line if it changed since the last one sent (the in-flight count changes with every job:
        told at most once a tick, not on every change)."""
        line = self.line()
        if line != self._last:
            self.say(line)

    def ready(self) -> None:
        """Start-up is done: READY=1 with the current line."""
        self._last = self.line()
        self._notifier.ready(status=self._last)

    def stopping(self) -> None:
        """The drain begins: STOPPING=1 with the current line."""
        self._last = self.line()
        self._notifier.stopping(status=self._last)

    def why_not_consuming(self) -> str | None:
        """For the consuming gauge and /healthz (asked from the HTTP thread: reads state only)."""
        why = self._link.why_not_consuming()
        if self._draining():
            return "draining"
        if why == "consumer paused" and not self._gate.is_up:
            return f"edge down: intake paused ({self._edge_url} does not answer)"
        return why


__all__ = ["StatusReport"]
