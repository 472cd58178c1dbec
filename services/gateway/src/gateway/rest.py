"""The REST API (``/v1/tasks``): thin HTTP bindings over :mod:`gateway.submission` and
:mod:`gateway.reading`, which gRPC shares, so the two APIs cannot drift apart.

Read-after-write contract of ``POST /v1/tasks``: the answer is **202 Accepted** once the submit
command is stored in the commands stream. The gateway then waits (at most
``OPSPAWN_READ_AFTER_WRITE_TIMEOUT_SECONDS``) for the read model to show the task and returns it as
the read model has it (``pending`` or later). If the projection is slower, the body is the pending
task built from the command; ``GET`` on the ``Location`` shows the task as soon as it is projected.
``503`` means nothing was stored and the request may be retried.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated, Literal

from litestar import Response, get, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter
from pydantic import BaseModel

from gateway.problems import PROBLEM_MEDIA_TYPE, Problem
from gateway.reading import (
    DEFAULT_LIMIT,
    TaskEventView,
    TaskReader,
    parse_status,
    parse_task_id,
)
from gateway.submission import TaskRequest, TaskSubmitter
from opspawn_contracts.task import TaskStatus, TaskView
from opspawn_readmodel.queries import MAX_PAGE_SIZE

API_DESCRIPTION = (__doc__ or "").split("\n\n", 1)[1]


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=Problem,
        description=description,
        media_type=PROBLEM_MEDIA_TYPE,
        generate_examples=False,
    )


INVALID_REQUEST: dict[int, ResponseSpec] = {
    HTTPStatus.BAD_REQUEST: _problem("The request is malformed; see 'detail'.")
}
UNKNOWN_TASK: dict[int, ResponseSpec] = {HTTPStatus.NOT_FOUND: _problem("No task has this id.")}


TaskIdParameter = Annotated[
    str, PathParameter(description="The task's id (a UUID).", schema_extra={"format": "uuid"})
]
"""Parsed by :func:`parse_task_id`, so a malformed id is a 400 saying so rather than a 404."""


class Health(BaseModel):
    status: Literal["ok"] = "ok"


@post(
    "/v1/tasks",
    status_code=HTTPStatus.ACCEPTED,
    summary="Submit a task",
    description=API_DESCRIPTION,
    tags=["tasks"],
    response_headers=[
        ResponseHeader(
            name="Location",
            description="/v1/tasks/{task_id} of the new task",
            documentation_only=True,
        )
    ],
    responses={
        **INVALID_REQUEST,
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE: _problem("The task exceeds the message size limit."),
        HTTPStatus.SERVICE_UNAVAILABLE: _problem(
            "The message bus did not acknowledge the command; nothing was stored, retry."
        ),
    },
)
async def create_task(
    data: JSONBody[TaskRequest], submitter: NamedDependency[TaskSubmitter]
) -> Response[TaskView]:
    task = await submitter.submit(data)
    return Response(
        task,
        status_code=HTTPStatus.ACCEPTED,
        headers={"Location": f"/v1/tasks/{task.task_id}"},
    )


@get(
    "/v1/tasks/{task_id:str}",
    summary="Get a task",
    tags=["tasks"],
    responses={**INVALID_REQUEST, **UNKNOWN_TASK},
)
async def get_task(task_id: TaskIdParameter, reader: NamedDependency[TaskReader]) -> TaskView:
    return await reader.get_task(parse_task_id(task_id))


@get(
    "/v1/tasks",
    summary="List tasks, newest first",
    tags=["tasks"],
    responses=INVALID_REQUEST,
)
async def list_tasks(
    reader: NamedDependency[TaskReader],
    status: Annotated[
        str | None,
        QueryParameter(
            description="Only tasks with this status.",
            schema_extra={"enum": [status.value for status in TaskStatus]},
        ),
    ] = None,
    limit: Annotated[
        int,
        QueryParameter(ge=1, description=f"At most this many tasks; capped at {MAX_PAGE_SIZE}."),
    ] = DEFAULT_LIMIT,
) -> list[TaskView]:
    return await reader.list_tasks(status=parse_status(status), limit=limit)


@get(
    "/v1/tasks/{task_id:str}/events",
    summary="A task's events in stream order",
    tags=["tasks"],
    responses={**INVALID_REQUEST, **UNKNOWN_TASK},
)
async def list_task_events(
    task_id: TaskIdParameter, reader: NamedDependency[TaskReader]
) -> list[TaskEventView]:
    return await reader.task_events(parse_task_id(task_id))


@get("/healthz", summary="Liveness", tags=["operations"])
async def healthz() -> Health:
    return Health()


ROUTES = [create_task, get_task, list_tasks, list_task_events, healthz]
