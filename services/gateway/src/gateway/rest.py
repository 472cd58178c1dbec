"""The REST API (``/v1``): thin HTTP bindings over the shared submission, reading, cancellation
and watching code, which gRPC uses too, so the two APIs cannot drift apart.

Every ``/v1`` endpoint needs ``Authorization: Bearer <API key>`` and sees only the key's tenant's
tasks; another tenant's task is a 404, exactly like a task that does not exist. Errors are RFC
9457 problem documents (``application/problem+json``) with a ``detail`` that says what to change.

Read-after-write contract of ``POST /v1/tasks``: the answer is **202 Accepted** with the
``pending`` task once the scheduler has stored its TaskSubmitted event (durable); ``GET`` on the
``Location`` finds it from then on (from the events stream while the read model has not shown it
yet). ``503`` means the task was not confirmed: its ``detail`` says whether nothing was stored
or the outcome is unknown; retrying with the same ``Idempotency-Key`` is safe either way. With an
``Idempotency-Key`` header, retrying the same request returns the same task
(``Idempotent-Replayed: true``) and never creates a second one; the same key with a different
request is a ``409``.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from http import HTTPStatus
from typing import Annotated, Any, Literal

from litestar import HttpMethod, Request, Response, get, post, route
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from pydantic import BaseModel, ConfigDict, Field

from gateway.api_errors import InvalidRequest
from gateway.auth import Authenticator, Principal
from gateway.cancellation import MAX_REASON_LENGTH, TaskCanceller
from gateway.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, TaskFilter
from gateway.problems import PROBLEM_MEDIA_TYPE, Problem
from gateway.readiness import Readiness, ReadinessProbe
from gateway.reading import (
    MAX_EVENTS_PAGE,
    MAX_SEQUENCE,
    Task,
    TaskEventView,
    TaskPage,
    TaskReader,
    parse_status,
    parse_task_id,
)
from gateway.submission import (
    IDEMPOTENCY_KEY_PATTERN,
    TASK_TYPE_PATTERN,
    TaskRequest,
    TaskSubmitter,
    parse_idempotency_key,
)
from gateway.watching import EventFeed, TaskWatcher, parse_resume_point
from opspawn_contracts.task import TaskStatus

API_DESCRIPTION = (__doc__ or "").split("\n\n", 1)[1]
SECURITY_SCHEME = "ApiKey"


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem,
        description=description,
        media_type=PROBLEM_MEDIA_TYPE,
        generate_examples=False,
    )


AUTH_FAILURES: dict[int, ResponseSpec] = {
    HTTPStatus.BAD_REQUEST: _problem("The request is malformed; see 'detail'."),
    HTTPStatus.UNAUTHORIZED: _problem("No valid API key: send 'Authorization: Bearer <key>'."),
    HTTPStatus.SERVICE_UNAVAILABLE: _problem(
        "NATS or the database did not answer; nothing was changed, retry."
    ),
}
WRITE_FAILURES: dict[int, ResponseSpec] = {
    **AUTH_FAILURES,
    HTTPStatus.FORBIDDEN: _problem("The API key is read-only."),
}
UNKNOWN_TASK: dict[int, ResponseSpec] = {
    HTTPStatus.NOT_FOUND: _problem("No task with this id in the API key's tenant.")
}
OVER_LIMIT = _problem("Above a limit of this gateway (page size, input size); see 'detail'.")
TASK_SECURITY: list[dict[str, list[str]]] = [{SECURITY_SCHEME: []}]

TaskIdParameter = Annotated[
    str, PathParameter(description="The task's id (a UUID).", schema_extra={"format": "uuid"})
]
"""Parsed by :func:`parse_task_id`, so a malformed id is a 400 saying so rather than a 404."""


def principal_provider(authenticator: Authenticator) -> Any:
    """The ``principal`` dependency: the caller, from the request's ``Authorization`` header."""

    async def principal(request: Request[Any, Any, Any]) -> Principal:
        return await authenticator.authenticate(request.headers.get("authorization"))

    return principal


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(
        default=None,
        max_length=MAX_REASON_LENGTH,
        description="Why; shown as the cancelled task's error_message.",
    )


def _instant(name: str, value: str | None) -> datetime | None:
    """An RFC 3339 date-time (with its offset) from a query; absent means unbounded."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.upper())
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in value.upper():
        raise InvalidRequest(
            f"{name} {value!r} is not an RFC 3339 date-time with an offset, "
            "e.g. 2026-01-01T00:00:00Z"
        )
    return moment


@post(
    "/v1/tasks",
    status_code=HTTPStatus.ACCEPTED,
    summary="Submit a task",
    description=API_DESCRIPTION,
    tags=["tasks"],
    security=TASK_SECURITY,
    response_headers=[
        ResponseHeader(
            name="Location",
            description="/v1/tasks/{task_id} of the task",
            documentation_only=True,
        ),
        ResponseHeader(
            name="Idempotent-Replayed",
            description="'true' when an earlier request with this Idempotency-Key made the task",
            documentation_only=True,
            required=False,
        ),
    ],
    responses={
        **WRITE_FAILURES,
        HTTPStatus.CONFLICT: _problem(
            "The Idempotency-Key was already used with a different request."
        ),
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE: _problem("The request body is too large."),
        HTTPStatus.UNPROCESSABLE_ENTITY: OVER_LIMIT,
    },
)
async def create_task(
    data: JSONBody[TaskRequest],
    submitter: NamedDependency[TaskSubmitter],
    principal: NamedDependency[Principal],
    idempotency_key: Annotated[
        str | None,
        HeaderParameter(
            name="Idempotency-Key",
            description=(
                "Makes retries safe: the same key and body return the same task, never a "
                "second one; the same key with another body is a 409. Keys are per tenant."
            ),
            schema_extra={"pattern": IDEMPOTENCY_KEY_PATTERN, "maxLength": 255},
        ),
    ] = None,
) -> Response[Task]:
    submission = await submitter.submit(data, principal, parse_idempotency_key(idempotency_key))
    task = Task.from_view(submission.task)
    headers = {"Location": f"/v1/tasks/{task.task_id}"}
    if submission.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(task, status_code=HTTPStatus.ACCEPTED, headers=headers)


@get(
    "/v1/tasks/{task_id:str}",
    summary="Get a task",
    tags=["tasks"],
    security=TASK_SECURITY,
    responses={**AUTH_FAILURES, **UNKNOWN_TASK},
)
async def get_task(
    task_id: TaskIdParameter,
    reader: NamedDependency[TaskReader],
    principal: NamedDependency[Principal],
) -> Task:
    return Task.from_view(await reader.get_task(principal.tenant, parse_task_id(task_id)))


@get(
    "/v1/tasks",
    summary="List tasks, newest first, a page at a time",
    description=(
        "Cursor pagination: pass the previous page's next_cursor as 'cursor', with the same "
        "filters. Tasks submitted while paging never shift the pages still to come; "
        "next_cursor is null on the last page."
    ),
    tags=["tasks"],
    security=TASK_SECURITY,
    responses={**AUTH_FAILURES, HTTPStatus.UNPROCESSABLE_ENTITY: OVER_LIMIT},
)
async def list_tasks(
    reader: NamedDependency[TaskReader],
    principal: NamedDependency[Principal],
    status: Annotated[
        str | None,
        QueryParameter(
            description="Only tasks with this status.",
            schema_extra={"enum": [status.value for status in TaskStatus]},
        ),
    ] = None,
    task_type: Annotated[
        str,
        QueryParameter(
            description="Only tasks of this type.",
            max_length=64,
            pattern=TASK_TYPE_PATTERN.replace("+", "*"),
        ),
    ] = "",
    created_after: Annotated[
        str | None,
        QueryParameter(
            description="Only tasks created after this instant (RFC 3339, with its offset).",
            schema_extra={"format": "date-time"},
        ),
    ] = None,
    created_before: Annotated[
        str | None,
        QueryParameter(
            description="Only tasks created before this instant (RFC 3339, with its offset).",
            schema_extra={"format": "date-time"},
        ),
    ] = None,
    limit: Annotated[
        int,
        QueryParameter(
            description=f"Page size, at most {MAX_PAGE_SIZE}; 0 means {DEFAULT_PAGE_SIZE}.",
            schema_extra={"minimum": 0, "maximum": MAX_PAGE_SIZE},
        ),
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str,
        QueryParameter(
            description="next_cursor of the previous page.",
            max_length=512,
            pattern=r"^[A-Za-z0-9_-]*$",
        ),
    ] = "",
) -> TaskPage:
    task_filter = TaskFilter(
        status=None if status is None else parse_status(status, allow_any=False),
        task_type=task_type or None,
        created_after=_instant("created_after", created_after),
        created_before=_instant("created_before", created_before),
    )
    views, next_cursor = await reader.list_tasks(
        principal.tenant, task_filter, limit=limit, cursor=cursor or None
    )
    return TaskPage(items=[Task.from_view(view) for view in views], next_cursor=next_cursor)


@post(
    "/v1/tasks/{task_id:str}/cancel",
    status_code=HTTPStatus.ACCEPTED,
    summary="Cancel a pending or running task",
    description=(
        "202: the cancel is accepted; the body is the task as it is now, and it ends "
        "'cancelled' shortly after (unless it finishes first). 409: the task has finished."
    ),
    tags=["tasks"],
    security=TASK_SECURITY,
    responses={
        **WRITE_FAILURES,
        **UNKNOWN_TASK,
        HTTPStatus.CONFLICT: _problem("The task has already finished."),
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE: _problem("The request body is too large."),
    },
)
async def cancel_task(
    task_id: TaskIdParameter,
    canceller: NamedDependency[TaskCanceller],
    principal: NamedDependency[Principal],
    data: JSONBody[CancelRequest | None] = None,
) -> Task:
    reason = data.reason if data is not None else None
    return Task.from_view(await canceller.cancel(principal, parse_task_id(task_id), reason))


@get(
    "/v1/tasks/{task_id:str}/events",
    summary="A task's events in stream order",
    description=(
        f"At most 'limit' events (default and maximum {MAX_EVENTS_PAGE}) with a sequence above "
        "'after'; to continue, pass the last one's sequence as 'after'."
    ),
    tags=["tasks"],
    security=TASK_SECURITY,
    responses={**AUTH_FAILURES, **UNKNOWN_TASK, HTTPStatus.UNPROCESSABLE_ENTITY: OVER_LIMIT},
)
async def list_task_events(
    task_id: TaskIdParameter,
    reader: NamedDependency[TaskReader],
    principal: NamedDependency[Principal],
    after: Annotated[
        int,
        QueryParameter(
            ge=0,
            le=MAX_SEQUENCE,
            description="Only events with a greater sequence.",
            schema_extra={"minimum": 0, "maximum": MAX_SEQUENCE},
        ),
    ] = 0,
    limit: Annotated[
        int,
        QueryParameter(
            description=f"At most this many events; 0 means {MAX_EVENTS_PAGE}.",
            schema_extra={"minimum": 0, "maximum": MAX_EVENTS_PAGE},
        ),
    ] = 0,
) -> list[TaskEventView]:
    return await reader.task_events(
        principal.tenant, parse_task_id(task_id), after=after, limit=limit
    )


def _sse_messages(feed: EventFeed) -> Any:
    async def messages() -> Any:
        async with feed:
            async for event in feed:
                if event is None:
                    yield ServerSentEventMessage(comment="keep-alive", data=None)
                else:
                    yield ServerSentEventMessage(
                        data=event.model_dump_json(), event=event.event_type, id=event.sequence
                    )

    return messages()


@get(
    "/v1/tasks/{task_id:str}/stream",
    summary="Follow a task's events live (Server-Sent Events)",
    description=(
        "Each SSE message is one event: 'id' is its stream sequence, 'event' its type, 'data' "
        "the same JSON as in /events. History comes first, then live events; the stream ends "
        "after the task's terminal event (TaskCompleted, TaskFailed, TaskCancelled). Resume "
        "after a disconnect with the Last-Event-ID header (browsers send it by themselves) or "
        "'after'. Comments (': keep-alive') are sent while nothing happens."
    ),
    tags=["tasks"],
    security=TASK_SECURITY,
    media_type="text/event-stream",
    response_description="A text/event-stream of the task's events.",
    responses={**AUTH_FAILURES, **UNKNOWN_TASK},
)
async def stream_task_events(
    task_id: TaskIdParameter,
    watcher: NamedDependency[TaskWatcher],
    principal: NamedDependency[Principal],
    last_event_id: Annotated[
        str,
        HeaderParameter(
            name="Last-Event-ID",
            description="The sequence of the last event received; the stream resumes after it.",
            pattern=r"^[0-9]{0,18}$",
            required=False,
        ),
    ] = "",
    after: Annotated[
        int,
        QueryParameter(
            ge=0,
            le=MAX_SEQUENCE,
            description="Resume after this sequence (if no Last-Event-ID).",
            schema_extra={"minimum": 0, "maximum": MAX_SEQUENCE},
        ),
    ] = 0,
) -> ServerSentEvent:
    if last_event_id:
        resume = parse_resume_point(last_event_id, "Last-Event-ID")
    else:
        resume = parse_resume_point(after)
    feed = await watcher.open(principal.tenant, parse_task_id(task_id), after=resume)
    return ServerSentEvent(_sse_messages(feed), background=BackgroundTask(feed.aclose))


@get("/healthz", summary="Liveness: the process answers", tags=["operations"])
async def healthz() -> Health:
    return Health()


@get(
    "/readyz",
    summary="Readiness: NATS and the read model answer",
    tags=["operations"],
    responses={
        HTTPStatus.SERVICE_UNAVAILABLE: ResponseSpec(
            data_container=Readiness,
            description="NATS or the database does not answer; the body says which.",
            generate_examples=False,
        )
    },
)
async def readyz(probe: NamedDependency[ReadinessProbe]) -> Response[Readiness]:
    readiness = await probe.check()
    status = HTTPStatus.OK if readiness.status == "ready" else HTTPStatus.SERVICE_UNAVAILABLE
    return Response(readiness, status_code=status)


def _options_handlers(handlers: list[HTTPRouteHandler]) -> list[HTTPRouteHandler]:
    """An OPTIONS handler per path whose ``Allow`` lists every method of the path.

    Litestar makes its own from the first handler registered for a path only, so ``OPTIONS
    /v1/tasks`` would leave out GET; registering these first keeps it from making any.
    """
    methods: dict[str, set[str]] = defaultdict(lambda: {"OPTIONS"})
    for handler in handlers:
        for path in handler.paths:
            methods[path] |= set(handler.http_methods)

    def allow(path: str) -> HTTPRouteHandler:
        header = ", ".join(sorted(methods[path]))

        @route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False)
        async def options() -> Response[None]:
            return Response(None, status_code=HTTPStatus.NO_CONTENT, headers={"Allow": header})

        return options

    return [allow(path) for path in methods]


_HANDLERS: list[HTTPRouteHandler] = [
    create_task,
    get_task,
    list_tasks,
    cancel_task,
    list_task_events,
    stream_task_events,
    healthz,
    readyz,
]
ROUTES = [*_options_handlers(_HANDLERS), *_HANDLERS]
