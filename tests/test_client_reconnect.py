"""The producer API's reconnect (contract §8): the client's connection closed from the broker side, with
requests in flight, more than once; every request answered exactly once, one edge job each.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.conftest import Queues, wait_until
from tests.faultkit import SLEEP_MODEL, edge_jobs_by_digest, rabbitmqctl
from worker.client import EdgeWorkerClient, Job
from worker.emulator import EdgeEmulator


def client_connections(name: str) -> list[str]:
    """Erlang pids of the broker connections whose client_properties carry this connection_name."""
    out = rabbitmqctl("list_connections", "pid", "client_properties", "-q")
    wanted = re.compile(r'\{"connection_name","' + re.escape(name) + r'"\}')
    return [line.split("\t", 1)[0] for line in out.splitlines() if wanted.search(line)]


def close_client_connections(name: str) -> int:
    pids = client_connections(name)
    for pid in pids:
        rabbitmqctl("close_connection", pid, "test: the client must reconnect")
    return len(pids)


def reconnected_since(client: EdgeWorkerClient, reconnects: int) -> Callable[[], bool]:
    return lambda: client.stats()["reconnects"] > reconnects


def sleep_job(client: EdgeWorkerClient, tag: str, seconds: float) -> Job:
    return client.jobs.submit_text(
        SLEEP_MODEL["identifier"], SLEEP_MODEL["version"], {"job": {"seconds": f"{seconds:.3f}", "tag": tag}}
    )


def test_closing_the_clients_connection_twice_loses_and_doubles_nothing(
    broker_url: str, queues: Queues, emulator: EdgeEmulator, worker_factory: Any
) -> None:
    """100 requests in flight, then 4 threads submitting while the connection is closed twice."""
    worker_factory(emulator.url).start()
    name = f"edge-worker-client test {uuid.uuid4().hex[:8]}"
    threads, per_thread = 4, 25
    jobs: list[Job] = []
    tags: dict[str, str] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    with EdgeWorkerClient(broker_url, queue=queues.queue, connection_name=name) as client:
        reply_queue = client.reply_queue

        stop = threading.Event()

        def produce(wave: int, n: int, seconds: float) -> None:
            try:
                for i in range(per_thread if wave == 1 else 150):
                    if wave == 2 and stop.is_set():
                        return
                    if wave == 2:
                        time.sleep(0.005)  # sleep-ok: paces the submissions across both closes
                    tag = f"{name} wave {wave} thread {n} request {i}"
                    job = sleep_job(client, tag, seconds)
                    with lock:
                        jobs.append(job)
                        tags[job.correlation_id] = tag
            except Exception as exc:  # noqa: BLE001 -- handed to the main thread, which fails the test
                errors.append(exc)

        def wave(number: int, seconds: float) -> list[threading.Thread]:
            started = [threading.Thread(target=produce, args=(number, n, seconds)) for n in range(threads)]
            for t in started:
                t.start()
            return started

        for t in wave(1, 0.3):  # about 4 s of work for the worker's 8 slots
            t.join(60)
        second = wave(2, 0.01)  # submitted while the connection is closed and reopened: unconfirmed ones too
        in_flight_at_close = []
        for _ in range(2):
            before = client.stats()["reconnects"]
            in_flight_at_close.append(len(jobs) - client.stats()["delivered"])
            assert close_client_connections(name) == 1
            wait_until(reconnected_since(client, before), 30, what="the client noticing the close")
            wait_until(lambda: client_connections(name), 30, what="the client reconnected")
        stop.set()
        for t in second:
            t.join(60)
        assert not errors, errors
        assert len(jobs) > threads * per_thread + 40
        finals = list(client.jobs.as_completed(jobs, timeout=60))
        stats = client.stats()
        assert client.reply_queue == reply_queue  # the same queue, consumed again after each reconnect

    assert in_flight_at_close[0] >= 50, in_flight_at_close
    assert stats["reconnects"] == 2 and stats["reply_queues_lost"] == 0
    by_request = Counter(final.correlation_id for final in finals)
    assert by_request == Counter({job.correlation_id: 1 for job in jobs})  # nothing lost, nothing twice
    assert all(final.status == "COMPLETE" for final in finals), Counter(f.status for f in finals)
    assert stats["delivered"] == len(jobs)
    # One edge job per request, republished or not (the worker is idempotent per message_id).
    edge = edge_jobs_by_digest(emulator)
    for final in finals:
        [edge_job] = edge[hashlib.sha256(tags[final.correlation_id].encode()).hexdigest()]
        assert edge_job["id"] == final.job_identifier
    print(
        f"requests={len(jobs)} in_flight_at_each_close={in_flight_at_close} reconnects={stats['reconnects']} "
        f"republished={stats['republished']} dropped_duplicate={stats['dropped_duplicate']}"
    )


def test_replies_published_while_the_client_is_away_wait_in_its_reply_queue(
    broker_url: str, queues: Queues, emulator: EdgeEmulator, worker_factory: Any
) -> None:
    """The connection is closed again and again for a while; the jobs finish meanwhile; no reply is lost."""
    worker_factory(emulator.url).start()
    name = f"edge-worker-client test {uuid.uuid4().hex[:8]}"
    with EdgeWorkerClient(broker_url, queue=queues.queue, connection_name=name) as client:
        jobs = [sleep_job(client, f"{name} {i}", 0.3) for i in range(20)]
        deadline = time.monotonic() + 2.0
        closes = 0
        while time.monotonic() < deadline:  # keeps the client away while the 0.3 s jobs end
            closes += close_client_connections(name)
        assert closes >= 2
        finals = list(client.jobs.as_completed(jobs, timeout=30))
        stats = client.stats()
    assert sorted(f.correlation_id for f in finals) == sorted(j.correlation_id for j in jobs)
    assert all(f.status == "COMPLETE" for f in finals)
    # A connection listed while it was still closing can be closed "twice": count the client's own view.
    assert stats["reply_queues_lost"] == 0 and stats["reconnects"] >= 2


class PausableProxy:
    """A TCP relay to the broker whose broker-to-client direction can be held, and whose connections can be cut.

    Held, the client's publishes reach the broker but their confirms (and the replies) do not come back:
    the way to have requests whose confirm is lost when the connection drops.
    """

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.flowing = threading.Event()
        self.flowing.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            broker = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, broker]
            threading.Thread(target=self._pump, args=(client, broker, None), daemon=True).start()
            threading.Thread(target=self._pump, args=(broker, client, self.flowing), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, gate: threading.Event | None) -> None:
        try:
            while True:
                if gate is not None:
                    gate.wait()
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> None:
        """Close every relayed connection (both sides), as a network failure would."""
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def close(self) -> None:
        self._listener.close()
        self.flowing.set()
        self.cut()


def test_requests_whose_confirm_was_lost_are_published_again_and_answered_once(
    broker_url: str, queues: Queues, emulator: EdgeEmulator, worker_factory: Any
) -> None:
    """Publishes reach the broker and run, but their confirms never come back; the connection then drops.

    The client publishes them again with the same message_id: the worker answers from its journal (no second
    edge job), and the client delivers one final reply per request though two reach its queue.
    """
    worker_factory(emulator.url).start()
    parts = urllib.parse.urlsplit(broker_url)
    proxy = PausableProxy((parts.hostname or "127.0.0.1", parts.port or 5672))
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{proxy.port}"))
    count = 20
    submitted: list[Job] = []
    errors: list[BaseException] = []
    try:
        with EdgeWorkerClient(url, queue=queues.queue, heartbeat=0) as client:
            proxy.flowing.clear()

            def produce(n: int) -> None:
                try:
                    for i in range(count // 4):
                        submitted.append(sleep_job(client, f"lost-confirm {queues.queue} {n}-{i}", 0.01))
                except Exception as exc:  # noqa: BLE001 -- handed to the main thread, which fails the test
                    errors.append(exc)

            # Each thread's submit blocks on its confirm: one request per thread reaches the broker at a time.
            producers = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
            for t in producers:
                t.start()
            wait_until(lambda: len(emulator.stats()["jobs"]) >= 4, 20, what="4 requests run while unconfirmed")
            proxy.flowing.set()
            proxy.cut()
            for t in producers:
                t.join(60)
            assert not errors, errors
            finals = list(client.jobs.as_completed(submitted, timeout=30))
            stats = client.stats()
    finally:
        proxy.close()
    assert len(submitted) == count
    assert Counter(f.correlation_id for f in finals) == Counter({j.correlation_id: 1 for j in submitted})
    assert all(f.status == "COMPLETE" for f in finals)
    assert stats["republished"] >= 4 and stats["reconnects"] >= 1
    assert len(emulator.stats()["jobs"]) == count  # one edge job per request, republished or not
    print(
        f"lost confirms: requests={count} republished={stats['republished']} "
        f"dropped_duplicate={stats['dropped_duplicate']} edge_jobs={len(emulator.stats()['jobs'])}"
    )
