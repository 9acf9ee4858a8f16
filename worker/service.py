"""The daemon: wires broker → decode → edge → reply → ack, and owns start-up, signals and the drain.

The in-flight table is worker/inflight.py; what the daemon says of itself (STATUS=, /healthz) worker/status.py.
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from types import FrameType

import structlog
from pika.adapters.select_connection import IOLoop

from worker.broker import BrokerLink, Delivery
from worker.config import Config, describe_url, parse_listen
from worker.edge import make_edge_client
from worker.errors import ConfigError, EdgeWorkerError, ExitCode, ServiceUnavailable
from worker.inflight import InFlight, InFlightTable, Start
from worker.jobs import EdgeGate, EdgeSlots, JobRunner, JobSettings, JobThreads, Outcome
from worker.journal import Journal
from worker.messages import ReplyRoute, route_from_properties
from worker.metrics import Metrics, MetricsServer
from worker.notify import SystemdNotifier
from worker.publish import Outbox
from worker.status import StatusReport

log = structlog.get_logger("worker.service")

TICK_S = 1.0
# How often an idle worker asks the edge whether it answers, so that /healthz and the intake pause reflect
# an edge that went away while nothing was running.
IDLE_EDGE_PROBE_S = 15.0
JOURNAL_EXPIRY_EVERY_S = 60.0


class Daemon:
    """`edge-worker run`: consume until told to stop, then drain."""

    def __init__(self, config: Config, *, notifier: SystemdNotifier | None = None) -> None:
        self._config = config
        self._notifier = notifier or SystemdNotifier()
        self.metrics = Metrics()
        self._ioloop = IOLoop()
        self._exit_code = ExitCode.OK
        self._exit_reason = "stopped"
        self._draining = False
        self._drain_deadline = 0.0
        self._signals = 0
        self._inflight = InFlightTable()
        self._last_expiry = 0.0
        self._last_edge_probe = time.monotonic()
        self._startup_done = False
        # The edge client edge.url names (HTTP/JSON gateway or gRPC), reporting its calls to the metrics.
        self._edge = make_edge_client(config.edge, on_call=self.metrics.edge_call)
        self._gate = EdgeGate(self._edge, on_change=self._on_edge_change)
        self._journal: Journal | None = None
        self._threads: JobThreads[Start] | None = None
        # worker.concurrency edge jobs at once; every delivery taken (prefetch = concurrency + lookahead) has a
        # thread, so a held one is decoded and waiting for a slot when a job ends.
        self._slots = EdgeSlots(config.worker.concurrency)
        self._link = BrokerLink(
            ioloop=self._ioloop,
            amqp=config.amqp,
            prefetch=config.worker.concurrency + config.worker.lookahead,
            on_message=self._on_message,
            on_ready=self._on_broker_ready,
            on_lost=self._on_broker_lost,
            on_fatal=self._on_fatal,
        )
        self._outbox = Outbox(
            link=self._link,
            ioloop=self._ioloop,
            reply_queue=config.amqp.reply_queue,
            dead_letter_queue=config.amqp.dead_letter_queue,
            metrics=self.metrics,
            may_retry=lambda: not self._draining,
            on_settled=self._maybe_finish_drain,
            journal=lambda: self._journal,
        )
        self._status = StatusReport(
            notifier=self._notifier,
            link=self._link,
            gate=self._gate,
            inflight=self._inflight,
            queue=config.amqp.queue,
            edge_url=config.edge.url,
            draining=lambda: self._draining,
        )
        self.metrics.watch_consuming(self._status.why_not_consuming)
        self._metrics_server: MetricsServer | None = None
        self._runner: JobRunner | None = None

    # -- start-up ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until drained or stopped; returns the process exit code."""
        cfg = self._config
        log.info(
            "worker_starting",
            pid=os.getpid(),
            concurrency=cfg.worker.concurrency,
            lookahead=cfg.worker.lookahead,
            queue=cfg.amqp.queue,
            queue_type=cfg.amqp.queue_type,
            edge_url=cfg.edge.url,
            config=cfg.source,
            brokers=[describe_url(u) for u in cfg.amqp.url],
        )
        try:
            self._journal = Journal.in_state_dir(
                cfg.worker.state_dir,
                retention_s=cfg.worker.journal_retention,
                max_bytes=cfg.worker.journal_max_bytes,
            )
        except Exception as exc:  # noqa: BLE001 -- sqlite3 and the file system raise many kinds
            log.error(
                "worker_exit",
                reason="journal unusable",
                state_dir=cfg.worker.state_dir,
                error=f"{type(exc).__name__}: {exc}",
                exit_code=int(ExitCode.CONFIG),
            )
            return int(ExitCode.CONFIG)
        self._runner = JobRunner(
            edge=self._edge,
            gate=self._gate,
            journal=self._journal,
            settings=JobSettings.from_config(cfg),
            metrics=self.metrics,
            publish_update=self._publish_update_threadsafe,
            slots=self._slots,
        )
        if cfg.metrics.listen:
            host, port = parse_listen(cfg.metrics.listen)
            try:
                self._metrics_server = MetricsServer(self.metrics, host=host, port=port, stale_after_s=30.0)
            except OSError as exc:
                log.error(
                    "worker_exit",
                    reason="metrics.listen cannot be bound",
                    listen=cfg.metrics.listen,
                    error=str(exc),
                    exit_code=int(ExitCode.CONFIG),
                )
                return int(ExitCode.CONFIG)
            self._metrics_server.start()
            log.info("metrics_listening", address=f"{host}:{self._metrics_server.address[1]}")
        # Signals first: a SIGTERM while start-up still waits for the edge is a clean stop (exit 0), not a kill.
        self._install_signals()
        try:
            self._wait_for_edge()
        except ServiceUnavailable as exc:
            log.error(
                "worker_exit",
                reason="edge unreachable at start-up",
                error=str(exc),
                exit_code=int(ExitCode.UNAVAILABLE),
            )
            self._shutdown_helpers()
            return int(ExitCode.UNAVAILABLE)
        if self._signals:
            log.info("worker_exit", reason="signal during start-up", exit_code=0)
            self._shutdown_helpers()
            return int(ExitCode.OK)
        self._threads = JobThreads(cfg.worker.concurrency + cfg.worker.lookahead, self._work)
        self._ioloop.call_later(cfg.worker.startup_timeout, self._check_startup)
        self._ioloop.call_later(TICK_S, self._tick)
        self._status.say("connecting to the broker")
        self._link.start()
        self._ioloop.start()
        self._shutdown_helpers()
        log.info("worker_exit", reason=self._exit_reason, exit_code=int(self._exit_code))
        return int(self._exit_code)

    def _wait_for_edge(self) -> None:
        deadline = time.monotonic() + self._config.worker.startup_timeout
        attempt = 0
        while True:
            attempt += 1
            answers, why = self._edge.answers()
            if answers:
                log.info("edge_reachable", url=self._config.edge.url, attempts=attempt)
                return
            if attempt == 1:
                self._status.say(f"waiting for the edge at {self._config.edge.url}")
                log.warning("edge_waiting", url=self._config.edge.url, error=why)
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(f"edge at {self._config.edge.url}: {why}")
            pause_until = time.monotonic() + min(2.0, 0.2 * attempt)
            while time.monotonic() < pause_until:
                if self._signals:
                    return
                time.sleep(0.05)  # short naps so a SIGTERM ends the wait promptly

    def _check_startup(self) -> None:
        if self._link.connections_made == 0 and not self._draining:
            self._exit_code = ExitCode.UNAVAILABLE
            self._exit_reason = "broker unreachable at start-up"
            log.error("broker_unreachable", waited_s=self._config.worker.startup_timeout)
            self._link.close()

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            # The second signal: leave at once; the broker redelivers whatever we had not acknowledged.
            log.warning(
                "worker_exit",
                reason=f"second signal {signal.Signals(signum).name}: immediate exit",
                exit_code=128 + signum,
                in_flight=len(self._inflight),
            )
            os._exit(128 + signum)
        self._ioloop.add_callback_threadsafe(partial(self._begin_drain, signal.Signals(signum).name))

    def _on_fatal(self, error: Exception) -> None:
        code = (
            error.exit_code if isinstance(error, EdgeWorkerError) and hasattr(error, "exit_code") else ExitCode.SOFTWARE
        )
        self._exit_code = ExitCode(code)
        self._exit_reason = str(error)
        log.error("worker_fatal", error=str(error), exit_code=int(code))
        self._draining = True
        self._link.close()

    # -- broker events (IOLoop thread) -------------------------------------------------------------

    def _on_broker_ready(self) -> None:
        self.metrics.set_broker_connected(True)
        if self._link.connections_made > 1:
            self.metrics.reconnects.inc()
        if not self._gate.is_up or self._draining:
            self._link.pause_consuming()
        if not self._startup_done:
            self._startup_done = True
            self._status.ready()
        else:
            self._status.say_current()

    def _on_broker_lost(self, reason: str) -> None:
        self.metrics.set_broker_connected(False)
        self._status.say(f"waiting for the broker: {reason}"[:200])
        self._inflight.drop_held(self._threads)
        if self._draining and not self._inflight and not self._outbox:
            self._link.close()

    def _on_message(self, delivery: Delivery) -> None:
        received_at = time.monotonic()
        if self._draining:
            self._link.requeue(delivery)
            return
        route = route_from_properties(delivery.properties)
        if self._inflight.attach(route.message_id, delivery):
            return  # a redelivery of a request we are still running: one job answers both
        entry = self._inflight.add(route.message_id, delivery)
        assert self._threads is not None
        # A thread is free (prefetch = the threads): it decodes the request, then waits for an edge slot.
        self._threads.submit(Start(entry, delivery, route, received_at))

    def _work(self, start: Start) -> None:
        """On a job thread."""
        assert self._runner is not None
        delivery = start.delivery
        outcome = self._runner.handle(delivery.body, delivery.properties, start.route, received_at=start.received_at)
        self._ioloop.add_callback_threadsafe(partial(self._complete, start.entry, outcome))

    def _hand_back_held(self) -> int:
        """The drain's first step: held deliveries go back to the queue (for another worker) at once.

        Those waiting for an edge slot end with a hand-back outcome (requeued in _complete); none waits
        from now on. Returns how many deliveries were held.
        """
        handed_back = self._slots.close()
        held = self._inflight.take_back_held(self._threads)
        return handed_back + self._requeue_all([d for start in held for d in start.entry.deliveries])

    def _requeue_all(self, deliveries: list[Delivery]) -> int:
        """Hand these deliveries back to the queue; returns how many were still ours to hand back."""
        return sum(int(self._link.requeue(delivery)) for delivery in deliveries)

    def _complete(self, entry: InFlight, outcome: Outcome) -> None:
        self._inflight.remove(entry)
        live = [d for d in entry.deliveries if self._link.is_live(d)]
        if outcome.requeue:
            for delivery in live:
                self._link.requeue(delivery)
        elif not live:
            # Its channel died: the broker redelivers it and the journal answers with the stored reply.
            log.info("outcome_deferred", message_id=entry.key, status=outcome.status)
        else:
            self._outbox.send(outcome, original=entry.deliveries[0], live=live)
        self._maybe_finish_drain()

    def _publish_update_threadsafe(self, route: ReplyRoute, body: bytes, status: str) -> None:
        # A closure, not functools.partial: pika logs the callback's repr at debug level, and a partial's repr
        # would carry the reply bytes.
        self._ioloop.add_callback_threadsafe(lambda: self._outbox.send_update(route, body, status))

    def _on_edge_change(self, _up: bool) -> None:
        # The worker thread that saw the outage and the probe thread that saw the edge return call this
        # without an order between them: a stale "down" can arrive after "up". So the loop applies the
        # gate's state as it is when the callback runs, not the value each caller passed.
        self._ioloop.add_callback_threadsafe(self._apply_edge_state)

    def _apply_edge_state(self) -> None:
        up = self._gate.is_up
        self.metrics.set_edge_up(up)
        if self._draining:
            return
        if up:
            self._link.resume_consuming()
        else:
            self._link.pause_consuming()
        self._status.say_current()

    # -- the loop's heartbeat ----------------------------------------------------------------------

    def _tick(self) -> None:
        self.metrics.tick()
        self._notifier.watchdog()
        if self._startup_done and self._link.ready:
            self._status.refresh()
        now = time.monotonic()
        if self._journal is not None and now - self._last_expiry >= JOURNAL_EXPIRY_EVERY_S:
            self._last_expiry = now
            expired = self._journal.expire(unfinished_after_s=self._config.amqp.consumer_timeout * 2)
            if expired:
                log.info("journal_expired", entries=expired)
        if self._draining:
            self._maybe_finish_drain()
        elif not self._inflight and self._gate.is_up and now - self._last_edge_probe >= IDLE_EDGE_PROBE_S:
            self._last_edge_probe = now
            self._gate.probe_idle()
        self._ioloop.call_later(TICK_S, self._tick)

    # -- drain -------------------------------------------------------------------------------------

    def _begin_drain(self, why: str) -> None:
        if self._draining:
            return
        self._draining = True
        self._exit_reason = f"{why}: drained"
        self._drain_deadline = time.monotonic() + self._config.worker.drain_timeout
        log.info(
            "worker_draining",
            signal=why,
            in_flight=len(self._inflight),
            drain_timeout_s=self._config.worker.drain_timeout,
        )
        self._status.stopping()
        self._link.pause_consuming()
        held = self._hand_back_held()
        if held:
            log.info("held_handed_back", deliveries=held)
        self._maybe_finish_drain()

    def _maybe_finish_drain(self) -> None:
        # Done when every job has ended and every reply is confirmed and its request acknowledged: closing
        # the connection earlier would hand back requests whose replies are already out.
        if not self._draining:
            return
        busy = bool(self._inflight or self._outbox)
        if busy and time.monotonic() < self._drain_deadline:
            return
        if busy:
            handed_back = self._requeue_all(self._inflight.deliveries())
            publishing = len(self._outbox)
            handed_back += self._outbox.hand_back_all()
            log.warning("drain_timeout", handed_back=handed_back, in_flight=len(self._inflight), publishing=publishing)
            self._exit_reason += f" (timeout: {handed_back} handed back)"
            self._inflight.clear()
        self._link.close()

    def _shutdown_helpers(self) -> None:
        self._gate.stop()
        if self._runner is not None:
            self._runner.stop()  # jobs still running were handed back: let their threads end quietly
        if self._threads is not None:
            self._threads.shutdown()
        if self._metrics_server is not None:
            self._metrics_server.stop()
        if self._journal is not None:
            released = self._journal.release_all()  # handed back, not crashed with: no suspects next time
            if released:
                log.info("journal_released", requests=released)
            self._journal.close()


__all__ = ["ConfigError", "Daemon"]
