"""A scripted gRPC edge for the transport's tests: real grpcio server on a free port, the generated servicer
base classes, and per-method answers a test sets (a message, an error status, a delay). Records every call."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc

from worker._proto.jobs.v1 import jobs_pb2_grpc
from worker._proto.results.v1 import results_pb2_grpc


@dataclass
class Reply:
    """One scripted answer: a response message, or an error status; after an optional delay."""

    message: Any = None
    code: grpc.StatusCode | None = None
    details: str = ""
    sleep_s: float = 0.0


@dataclass
class Call:
    method: str
    request: Any
    metadata: dict[str, str]
    peer: str


@dataclass
class GrpcStub:
    """Scripted answers per method name; the last answer of a script repeats."""

    target: str = ""
    scripts: dict[str, list[Reply]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"grpc://{self.target}"

    def on(self, method: str, *replies: Reply) -> None:
        with self.lock:
            self.scripts[method] = list(replies)

    def seen(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def answer(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.calls.append(Call(method, request, dict(context.invocation_metadata()), context.peer()))  # type: ignore[arg-type]
            script = self.scripts.get(method)
            reply = (script.pop(0) if len(script) > 1 else script[0]) if script else None
        if reply is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} not scripted")
        assert reply is not None
        if reply.sleep_s:
            time.sleep(reply.sleep_s)  # sleep-ok: the stub plays an edge too slow to answer
        if reply.code is not None:
            context.abort(reply.code, reply.details)
        return reply.message


def _servicers(stub: GrpcStub) -> tuple[Any, Any]:
    def relay(method: str) -> Any:
        def call(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
            return stub.answer(method, request, context)

        return call

    jobs_methods = ["SubmitJob", "GetJobs", "GetJob", "GetFeatures", "CancelJob", "CloseJob", "AddInputToJob"]
    jobs = type("Jobs", (jobs_pb2_grpc.JobServiceServicer,), {m: relay(m) for m in jobs_methods})
    results = type("Results", (results_pb2_grpc.ResultsServiceServicer,), {"GetResults": relay("GetResults")})
    return jobs(), results()


class StubServer:
    """The stub served on 127.0.0.1, a free port."""

    def __init__(self, stub: GrpcStub) -> None:
        self.stub = stub
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        jobs, results = _servicers(stub)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, self.server)
        results_pb2_grpc.add_ResultsServiceServicer_to_server(results, self.server)
        port = self.server.add_insecure_port("127.0.0.1:0")
        stub.target = f"127.0.0.1:{port}"

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)
