"""One error type for everything a caller can get wrong or wait out, mapped once to HTTP and gRPC statuses."""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    """An error with an HTTP status, a gRPC status and a stable machine-readable code."""

    http_status = 500
    grpc_status = grpc.StatusCode.INTERNAL
    code = "internal"

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        # a 503 always says when to come back, whoever raises it
        self.retry_after = 1 if retry_after is None and self.http_status == 503 else retry_after


def _kind(name: str, http: int, rpc: grpc.StatusCode, code: str) -> type[GatewayError]:
    return type(name, (GatewayError,), {"http_status": http, "grpc_status": rpc, "code": code, "__doc__": code})


InvalidImage = _kind("InvalidImage", 400, grpc.StatusCode.INVALID_ARGUMENT, "invalid_image")
BadRequest = _kind("BadRequest", 400, grpc.StatusCode.INVALID_ARGUMENT, "bad_request")
Unauthorized = _kind("Unauthorized", 401, grpc.StatusCode.UNAUTHENTICATED, "unauthorized")
NotFound = _kind("NotFound", 404, grpc.StatusCode.NOT_FOUND, "not_found")
Conflict = _kind("Conflict", 409, grpc.StatusCode.FAILED_PRECONDITION, "conflict")
PayloadTooLarge = _kind("PayloadTooLarge", 413, grpc.StatusCode.RESOURCE_EXHAUSTED, "payload_too_large")
UnsupportedMediaType = _kind("UnsupportedMediaType", 415, grpc.StatusCode.INVALID_ARGUMENT, "unsupported_media_type")
InvalidParameter = _kind("InvalidParameter", 422, grpc.StatusCode.INVALID_ARGUMENT, "invalid_parameter")
Overloaded = _kind("Overloaded", 503, grpc.StatusCode.UNAVAILABLE, "overloaded")
BackendUnavailable = _kind("BackendUnavailable", 503, grpc.StatusCode.UNAVAILABLE, "backend_unavailable")
DeadlineExceeded = _kind("DeadlineExceeded", 504, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline_exceeded")
BackendError = _kind("BackendError", 502, grpc.StatusCode.INTERNAL, "backend_error")
