"""The gateway's errors, each with exactly one REST status and one gRPC status code.

Shared code (:mod:`gateway.submission`, :mod:`gateway.reading`, :mod:`gateway.auth`, …) raises
these; :mod:`gateway.problems` turns them into RFC 9457 problem documents and
:mod:`gateway.grpc_api` into gRPC statuses, both from the attributes below, so the two APIs
report every failure the same way by construction:

=========================  =====  ===================
error                      REST   gRPC
=========================  =====  ===================
InvalidRequest             400    INVALID_ARGUMENT
Unprocessable              422    INVALID_ARGUMENT
Unauthenticated            401    UNAUTHENTICATED
PermissionDenied           403    PERMISSION_DENIED
TaskNotFound               404    NOT_FOUND
IdempotencyConflict        409    ALREADY_EXISTS
TaskFinished               409    FAILED_PRECONDITION
RequestTooLarge            413    RESOURCE_EXHAUSTED
LimitExceeded              422    OUT_OF_RANGE
ServiceUnavailable         503    UNAVAILABLE
=========================  =====  ===================

400 means the request does not match the documented schema (the OpenAPI document says why it
could not); 422 means it does, but cannot be carried out: it is above a limit, or breaks a rule
the schema cannot state (a cursor made for other filters, a plan step outside
``options.allowed_tools``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar
from uuid import UUID

import grpc


class ApiError(Exception):
    http_status: ClassVar[HTTPStatus]
    grpc_code: ClassVar[grpc.StatusCode]
    headers: ClassVar[dict[str, str]] = {}


class InvalidRequest(ApiError, ValueError):
    """Malformed input; the message says which field and why."""

    http_status = HTTPStatus.BAD_REQUEST
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Unprocessable(ApiError, ValueError):
    """Well-formed, but not something the gateway can carry out; the message says why."""

    http_status = HTTPStatus.UNPROCESSABLE_ENTITY
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(ApiError):
    """No valid API key came with the call; the message says what to send."""

    http_status = HTTPStatus.UNAUTHORIZED
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    headers = {"WWW-Authenticate": 'Bearer realm="opspawn"'}


class PermissionDenied(ApiError):
    """The key is valid but may not do this."""

    http_status = HTTPStatus.FORBIDDEN
    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class TaskNotFound(ApiError, LookupError):
    """No task with this id in the caller's tenant (another tenant's task included)."""

    http_status = HTTPStatus.NOT_FOUND
    grpc_code = grpc.StatusCode.NOT_FOUND

    def __init__(self, task_id: UUID) -> None:
        super().__init__(f"no task with id {task_id}")
        self.task_id = task_id


class IdempotencyConflict(ApiError):
    """The idempotency key was used before with another request."""

    http_status = HTTPStatus.CONFLICT
    grpc_code = grpc.StatusCode.ALREADY_EXISTS


class TaskFinished(ApiError):
    """The task is in a state that does not allow the operation (cancel a finished task)."""

    http_status = HTTPStatus.CONFLICT
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class RequestTooLarge(ApiError):
    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class LimitExceeded(ApiError):
    """Well-formed, but above one of the gateway's configured limits."""

    http_status = HTTPStatus.UNPROCESSABLE_ENTITY
    grpc_code = grpc.StatusCode.OUT_OF_RANGE


class ServiceUnavailable(ApiError):
    """NATS or the database did not answer; nothing was changed and the call may be retried."""

    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_code = grpc.StatusCode.UNAVAILABLE
    headers = {"Retry-After": "1"}
