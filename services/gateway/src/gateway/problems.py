"""Every REST error as an RFC 9457 problem document (``application/problem+json``).

Clients get one shape for all errors: ``status``, a ``title`` naming the kind of problem, a
``detail`` a person can act on, and for invalid requests ``errors``, one entry per bad field.
The gateway's own errors (:mod:`gateway.api_errors`) carry their status; Litestar's (a malformed
body, a body over the size limit, an unknown route) keep theirs. Handlers raise, never build
error responses.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from pydantic import BaseModel, Field

from gateway.api_errors import ApiError

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"


class FieldProblem(BaseModel):
    key: str | None = Field(default=None, description="The offending field, e.g. 'input_data'.")
    message: str
    source: str | None = Field(default=None, description="body, query or path.")


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = None


def problem_response(
    status: int,
    detail: str,
    *,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[dict[str, Any]]:
    problem = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, errors=errors)
    return Response(
        problem.model_dump(mode="json", exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def _field_problem(item: dict[str, Any]) -> FieldProblem:
    key, source = item.get("key") or None, item.get("source")
    if key == "data" and source == "body":
        # Litestar reports a missing body as a KeyError on its internal 'data' argument.
        return FieldProblem(message="the request body is empty; send a JSON object", source=source)
    return FieldProblem(key=key, message=str(item.get("message", "")), source=source)


def _field_problems(extra: Any) -> list[FieldProblem]:
    if not isinstance(extra, list):
        return []
    return [_field_problem(item) for item in extra if isinstance(item, dict)]


def _http_error(_: Request[Any, Any, Any], error: HTTPException) -> Response[dict[str, Any]]:
    problems = _field_problems(error.extra)
    detail = error.detail
    if isinstance(error, ValidationException) and problems:
        detail = "invalid request: " + "; ".join(
            f"{problem.key}: {problem.message}" if problem.key else problem.message
            for problem in problems
        )
    return problem_response(
        error.status_code, detail, errors=problems or None, headers=error.headers
    )


def _api_error(_: Request[Any, Any, Any], error: ApiError) -> Response[dict[str, Any]]:
    return problem_response(error.http_status, str(error), headers=dict(error.headers) or None)


def _unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[dict[str, Any]]:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return problem_response(
        HTTPStatus.INTERNAL_SERVER_ERROR, "the gateway failed to answer; see its log for the cause"
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: _http_error,
    ApiError: _api_error,
    Exception: _unexpected,
}
