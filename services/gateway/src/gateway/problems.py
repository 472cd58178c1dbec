"""Every REST error as an RFC 9457 problem document (``application/problem+json``).

Clients get one shape for all errors: ``status``, a ``title`` naming the kind of problem, a
``detail`` a person can act on, and for invalid requests ``errors``, one entry per bad field.
Domain errors raised by :mod:`gateway.submission` and :mod:`gateway.reading` map to status codes
here, so handlers stay free of HTTP error plumbing.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from pydantic import BaseModel, Field

from gateway.reading import InvalidQuery, TaskNotFound
from gateway.submission import SubmissionUnavailable, TaskTooLarge

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
) -> Response[Problem]:
    problem = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, errors=errors)
    return Response(
        problem,
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


def _http_error(_: Request[Any, Any, Any], error: HTTPException) -> Response[Problem]:
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


def _not_found(_: Request[Any, Any, Any], error: TaskNotFound) -> Response[Problem]:
    return problem_response(HTTPStatus.NOT_FOUND, str(error))


def _invalid_query(_: Request[Any, Any, Any], error: InvalidQuery) -> Response[Problem]:
    return problem_response(HTTPStatus.BAD_REQUEST, str(error))


def _too_large(_: Request[Any, Any, Any], error: TaskTooLarge) -> Response[Problem]:
    return problem_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(error))


def _unavailable(_: Request[Any, Any, Any], error: SubmissionUnavailable) -> Response[Problem]:
    return problem_response(
        HTTPStatus.SERVICE_UNAVAILABLE, str(error), headers={"Retry-After": "1"}
    )


def _unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[Problem]:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return problem_response(
        HTTPStatus.INTERNAL_SERVER_ERROR, "the gateway failed to answer; see its log for the cause"
    )


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HTTPException: _http_error,
    TaskNotFound: _not_found,
    InvalidQuery: _invalid_query,
    TaskTooLarge: _too_large,
    SubmissionUnavailable: _unavailable,
    Exception: _unexpected,
}
