"""The gRPC face: jobs.v1.JobService and results.v1.ResultsService as the edge SDK calls them, over the
same EdgeState as the HTTP face. Answers are the state's proto3 JSON parsed into the generated messages;
errors are gRPC status codes; the receive limit is a stock server's (max_request_bytes, 4 MiB), refused
with grpc-go's RESOURCE_EXHAUSTED message (a Go server is what serves a real edge) and counted."""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2
from google.protobuf.message import DecodeError, Message

from worker._proto.jobs.v1 import jobs_pb2
from worker._proto.results.v1 import results_pb2
from worker.emulator.errors import INTERNAL, RESOURCE_EXHAUSTED, EdgeError, injected_unavailable
from worker.emulator.state import EdgeState
from worker.emulator.submission import JobFilter, parse_submission

JOB_SERVICE = jobs_pb2.DESCRIPTOR.services_by_name["JobService"].full_name  # "jobs.v1.JobService"
RESULTS_SERVICE = results_pb2.DESCRIPTOR.services_by_name["ResultsService"].full_name
_STATUS_BY_CODE = {status.value[0]: status for status in grpc.StatusCode}
_FACE = "grpc"
_MAX_WORKERS = 64  # calls served at once; more wait in the server's queue
# Messages up to this size reach the handler, which refuses those over max_request_bytes itself (counted,
# in grpc-go's words); grpcio refuses larger ones on its own, uncounted.
_TRANSPORT_LIMIT_BYTES = 64 * 1024 * 1024

Handler = Callable[[Any], Message]
M = TypeVar("M", bound=Message)


class GrpcFace:
    """Serves one EdgeState over gRPC; start() after stop() binds the same port again."""

    def __init__(self, state: EdgeState, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self.port = port
        self._server: grpc.Server | None = None

    def start(self) -> None:
        limit = max(self.state.config.max_request_bytes, _TRANSPORT_LIMIT_BYTES)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=_MAX_WORKERS, thread_name_prefix="edge-emulator-grpc"),
            handlers=[self._job_service(), self._results_service()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a silent second listener
            ],
        )
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio raises this when the port cannot be bound
            raise OSError(f"cannot bind the gRPC face to {address}: {exc}") from None
        if bound == 0:
            raise OSError(f"cannot bind the gRPC face to {address}")
        self.port = bound
        server.start()
        self._server = server

    def stop(self) -> None:
        """Stop listening and cancel the calls in flight (a dead edge, not a graceful one)."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace=None).wait()

    # ----- services --------------------------------------------------------------------------------

    def _job_service(self) -> grpc.GenericRpcHandler:
        state = self.state
        return grpc.method_handlers_generic_handler(
            JOB_SERVICE,
            {
                "SubmitJob": self._unary("submit", jobs_pb2.JobSubmission, self._submit_job),
                "GetJob": self._unary("status", jobs_pb2.JobIdentifier, self._get_job),
                "CancelJob": self._unary("cancel", jobs_pb2.JobIdentifier, self._cancel_job),
                "GetFeatures": self._unary(
                    "features", empty_pb2.Empty, lambda _: _parse(state.features(), jobs_pb2.JobFeatures())
                ),
                "CloseJob": self._unary("close", jobs_pb2.JobIdentifier, self._close_job),
                "AddInputToJob": self._unary("chunk", jobs_pb2.AppendableJobInput, self._add_input_to_job),
                "GetJobs": self._unary("list", jobs_pb2.JobFilter, self._get_jobs),
            },
        )

    def _results_service(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            RESULTS_SERVICE, {"GetResults": self._unary("results", jobs_pb2.JobIdentifier, self._get_results)}
        )

    def _unary(self, call: str, request_type: type[Message], handler: Handler) -> grpc.RpcMethodHandler[Any, Any]:
        """One method: injected faults first, then the size limit, then the call counted and served; an
        EdgeError is answered as a status."""
        state = self.state
        limit = state.config.max_request_bytes

        def serve(raw: bytes, context: grpc.ServicerContext) -> Message:
            if state.draw_injected_failure():
                _abort(context, injected_unavailable())
            if len(raw) > limit:
                state.count_too_large()
                _abort(
                    context,
                    EdgeError(RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({len(raw)} vs. {limit})"),
                )
            try:
                request = request_type.FromString(raw)
            except DecodeError:
                _abort(context, EdgeError(INTERNAL, f"grpc: error unmarshalling request: {request_type.__name__}"))
            state.count_call(call, _FACE)
            carried = dict(context.invocation_metadata())
            state.record_trace(_FACE, call, *(_text(carried.get(key)) for key in ("traceparent", "tracestate")))
            try:
                return handler(request)
            except EdgeError as exc:
                _abort(context, exc)

        # No request deserializer: the handler gets the bytes, to measure them before decoding.
        return grpc.unary_unary_rpc_method_handler(
            serve, response_serializer=lambda message: message.SerializeToString()
        )

    def _submit_job(self, request: jobs_pb2.JobSubmission) -> Message:
        document = json_format.MessageToDict(request)
        receipt = self.state.submit(parse_submission(document, self.state.models))
        return _parse(receipt, jobs_pb2.JobSubmissionReceipt())

    def _get_job(self, request: jobs_pb2.JobIdentifier) -> Message:
        return _parse(self.state.status(request.identifier), jobs_pb2.JobDetails())

    def _cancel_job(self, request: jobs_pb2.JobIdentifier) -> Message:
        return _parse(self.state.cancel(request.identifier), jobs_pb2.JobDetails())

    def _close_job(self, request: jobs_pb2.JobIdentifier) -> Message:
        return _parse(self.state.close(request.identifier), jobs_pb2.JobSubmissionReceipt())

    def _add_input_to_job(self, request: jobs_pb2.AppendableJobInput) -> Message:
        try:
            self.state.append(request.job_identifier, request.datasource_name, request.input_name, request.data)
        except EdgeError:
            self.state.count_refused_chunk()
            raise
        return empty_pb2.Empty()

    def _get_jobs(self, request: jobs_pb2.JobFilter) -> Message:
        wanted = JobFilter.parse(json_format.MessageToDict(request, preserving_proto_field_name=True))
        summaries = self.state.list_jobs(wanted)
        listing = jobs_pb2.JobSummaryList(total_count=len(summaries), page_number=1, page_size=len(summaries))
        for summary in summaries:
            _parse(summary, listing.jobs.add())
        listing.page_count = 1 if summaries else 0
        return listing

    def _get_results(self, request: jobs_pb2.JobIdentifier) -> Message:
        document = self.state.results(request.identifier)
        failures: dict[str, dict[str, Any]] = document.pop("failures")
        results = _parse(document, results_pb2.Results())
        for source, failure in failures.items():
            content = struct_pb2.Struct()
            content.update({key: value for key, value in failure.items() if key != "@type"})
            results.failures[source].Pack(content)
        return results


def _parse(document: dict[str, Any], message: M) -> M:
    json_format.ParseDict(document, message)
    return message


def _abort(context: grpc.ServicerContext, error: EdgeError) -> NoReturn:
    context.abort(_STATUS_BY_CODE.get(error.code, grpc.StatusCode.UNKNOWN), error.message)


def _text(value: str | bytes | None) -> str | None:
    return value if isinstance(value, str) else None
