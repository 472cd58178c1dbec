"""The gRPC API (``opspawn.v1.TaskService``) on ``grpc.aio``, with reflection and health.

Every RPC authenticates with the ``authorization`` metadata (``Bearer <API key>``) and calls the
same submission, reading, cancellation and watching code as REST; errors become the status code
their :class:`~gateway.api_errors.ApiError` names, so both APIs fail the same way (see
:mod:`gateway.api_errors` for the table). Reflection lets grpcurl and other tools call the service
without the ``.proto``; the standard health service reports SERVING for ``""`` and
``opspawn.v1.TaskService`` while the gateway runs. Neither needs a key.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from gateway.api_errors import ApiError, InvalidRequest
from gateway.auth import Authenticator, Principal
from gateway.cancellation import MAX_REASON_LENGTH, TaskCanceller
from gateway.instrumentation import GrpcTelemetry
from gateway.pagination import TaskFilter
from gateway.proto_mapping import (
    event_to_proto,
    optional_time,
    options_from_proto,
    status_filter,
    struct_to_dict,
    task_to_proto,
)
from gateway.reading import TaskReader, parse_task_id
from gateway.submission import (
    TaskRequest,
    TaskSubmitter,
    describe_validation_error,
    parse_idempotency_key,
)
from gateway.watching import TaskWatcher
from opspawn.v1 import tasks_pb2, tasks_pb2_grpc
from opspawn_contracts.subjects import validate_token

TASK_SERVICE_NAME: str = tasks_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]


@contextlib.asynccontextmanager
async def _status_for_errors(context: Context) -> AsyncIterator[None]:
    """Turn the shared code's errors into gRPC status codes with their messages."""
    try:
        yield
    except ValidationError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, describe_validation_error(error))
    except ApiError as error:
        await context.abort(error.grpc_code, str(error))


class TaskServiceApi(tasks_pb2_grpc.TaskServiceServicer):
    def __init__(
        self,
        authenticator: Authenticator,
        submitter: TaskSubmitter,
        reader: TaskReader,
        canceller: TaskCanceller,
        watcher: TaskWatcher,
    ) -> None:
        self._authenticator = authenticator
        self._submitter = submitter
        self._reader = reader
        self._canceller = canceller
        self._watcher = watcher

    async def _principal(self, context: Context) -> Principal:
        metadata = context.invocation_metadata() or ()
        authorization = next(
            (str(value) for key, value in metadata if key.lower() == "authorization"), None
        )
        return await self._authenticator.authenticate(authorization)

    async def CreateTask(
        self, request: tasks_pb2.CreateTaskRequest, context: Context
    ) -> tasks_pb2.CreateTaskResponse:
        async with _status_for_errors(context):
            principal = await self._principal(context)
            submission = TaskRequest.model_validate(
                {
                    "task_type": request.task_type,
                    "input_data": struct_to_dict(request.input_data),
                    "options": options_from_proto(request.options),
                }
            )
            submitted = await self._submitter.submit(
                submission, principal, parse_idempotency_key(request.idempotency_key or None)
            )
        return tasks_pb2.CreateTaskResponse(
            task=task_to_proto(submitted.task), replayed=submitted.replayed
        )

    async def GetTask(
        self, request: tasks_pb2.GetTaskRequest, context: Context
    ) -> tasks_pb2.GetTaskResponse:
        async with _status_for_errors(context):
            principal = await self._principal(context)
            task = await self._reader.get_task(principal.tenant, parse_task_id(request.task_id))
        return tasks_pb2.GetTaskResponse(task=task_to_proto(task))

    async def ListTasks(
        self, request: tasks_pb2.ListTasksRequest, context: Context
    ) -> tasks_pb2.ListTasksResponse:
        async with _status_for_errors(context):
            principal = await self._principal(context)
            try:
                status = status_filter(request.status)
                if request.task_type:
                    validate_token("task_type", request.task_type)
            except ValueError as error:
                raise InvalidRequest(str(error)) from None
            task_filter = TaskFilter(
                status=status,
                task_type=request.task_type or None,
                created_after=optional_time(request, "created_after"),
                created_before=optional_time(request, "created_before"),
            )
            tasks, next_cursor = await self._reader.list_tasks(
                principal.tenant,
                task_filter,
                limit=request.limit,
                cursor=request.page_token or None,
            )
        return tasks_pb2.ListTasksResponse(
            tasks=[task_to_proto(task) for task in tasks], next_page_token=next_cursor or ""
        )

    async def ListTaskEvents(
        self, request: tasks_pb2.ListTaskEventsRequest, context: Context
    ) -> tasks_pb2.ListTaskEventsResponse:
        async with _status_for_errors(context):
            principal = await self._principal(context)
            events = await self._reader.task_events(
                principal.tenant,
                parse_task_id(request.task_id),
                after=request.after_sequence,
                limit=request.limit,
            )
        return tasks_pb2.ListTaskEventsResponse(events=[event_to_proto(event) for event in events])

    async def CancelTask(
        self, request: tasks_pb2.CancelTaskRequest, context: Context
    ) -> tasks_pb2.CancelTaskResponse:
        async with _status_for_errors(context):
            principal = await self._principal(context)
            if len(request.reason) > MAX_REASON_LENGTH:
                raise InvalidRequest(f"reason must be at most {MAX_REASON_LENGTH} characters")
            task = await self._canceller.cancel(
                principal, parse_task_id(request.task_id), request.reason or None
            )
        return tasks_pb2.CancelTaskResponse(task=task_to_proto(task))

    async def WatchTask(
        self, request: tasks_pb2.WatchTaskRequest, context: Context
    ) -> AsyncIterator[tasks_pb2.TaskEvent]:
        async with _status_for_errors(context):
            principal = await self._principal(context)
            feed = await self._watcher.open(
                principal.tenant, parse_task_id(request.task_id), after=request.after_sequence
            )
        async with feed:
            async for event in feed:
                if event is not None:
                    yield event_to_proto(event)


class GrpcServer:
    """The grpc.aio server with TaskService, reflection and health, on the running event loop."""

    def __init__(self, api: TaskServiceApi) -> None:
        # Without SO_REUSEPORT a port already in use fails start-up instead of being shared.
        self._server = grpc.aio.server(
            interceptors=[GrpcTelemetry()], options=[("grpc.so_reuseport", 0)]
        )
        self._health = health.aio.HealthServicer()
        tasks_pb2_grpc.add_TaskServiceServicer_to_server(api, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (TASK_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port) and serve; returns the bound port."""
        bound = self._server.add_insecure_port(f"{host}:{port}")
        await self._server.start()
        for service in ("", TASK_SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return bound

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new calls, and give in-flight calls ``grace`` seconds."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace)
