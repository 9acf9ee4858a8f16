"""An edge's error answer: a gRPC status code and a message, whichever face carries it."""

from __future__ import annotations

from typing import Any

# gRPC status codes (the numbers grpc-gateway puts in its error bodies).
INVALID_ARGUMENT = 3
NOT_FOUND = 5
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14

# The HTTP status grpc-gateway answers for each code.
_HTTP_STATUS_BY_CODE = {
    INVALID_ARGUMENT: 400,
    NOT_FOUND: 404,
    RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 400,
    UNIMPLEMENTED: 501,
    INTERNAL: 500,
    UNAVAILABLE: 503,
}


class EdgeError(Exception):
    """An error answer; the HTTP face renders it in grpc-gateway shape, the gRPC face as a status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS_BY_CODE.get(self.code, 500)

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": []}


def invalid(message: str) -> EdgeError:
    return EdgeError(INVALID_ARGUMENT, message)


def injected_unavailable() -> EdgeError:
    return EdgeError(UNAVAILABLE, "unavailable (injected)")
