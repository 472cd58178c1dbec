"""The gRPC API (``opspawn.v1.TaskService``) on ``grpc.aio``, with reflection and health.

Every RPC calls the same :mod:`gateway.submission` / :mod:`gateway.reading` functions as REST and
maps their errors to status codes: INVALID_ARGUMENT (with the reason) for bad input, NOT_FOUND for
an unknown task, UNAVAILABLE when the submit command was not acknowledged (nothing stored, retry).
Reflection lets grpcurl and other tools call the service without the ``.proto``; the standard
health service reports SERVING for ``""`` and ``opspawn.v1.TaskService`` while the gateway runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from gateway.proto_mapping import event_to_proto, status_filter, struct_to_dict, task_to_proto
from gateway.reading import InvalidQuery, TaskNotFound, TaskReader, parse_task_id
from gateway.submission import (
    SubmissionUnavailable,
    TaskRequest,
    TaskSubmitter,
    TaskTooLarge,
    describe_validation_error,
)
from opspawn.v1 import tasks_pb2, tasks_pb2_grpc

TASK_SERVICE_NAME: str = tasks_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name

Context = grpc.aio.ServicerContext[Any, Any]


@contextlib.asynccontextmanager
async def _status_for_errors(context: Context) -> AsyncIterator[None]:
    """Turn the shared services' errors into gRPC status codes with their messages."""
    try:
        yield
    except ValidationError as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, describe_validation_error(error))
    except (InvalidQuery, TaskTooLarge) as error:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
    except TaskNotFound as error:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
    except SubmissionUnavailable as error:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))


class TaskServiceApi(tasks_pb2_grpc.TaskServiceServicer):
    def __init__(self, submitter: TaskSubmitter, reader: TaskReader) -> None:
        self._submitter = submitter
        self._reader = reader

    async def CreateTask(
        self, request: tasks_pb2.CreateTaskRequest, context: Context
    ) -> tasks_pb2.CreateTaskResponse:
        async with _status_for_errors(context):
            submission = TaskRequest.model_validate(
                {"task_type": request.task_type, "input_data": struct_to_dict(request.input_data)}
            )
            task = await self._submitter.submit(submission)
        return tasks_pb2.CreateTaskResponse(task=task_to_proto(task))

    async def GetTask(
        self, request: tasks_pb2.GetTaskRequest, context: Context
    ) -> tasks_pb2.GetTaskResponse:
        async with _status_for_errors(context):
            task = await self._reader.get_task(parse_task_id(request.task_id))
        return tasks_pb2.GetTaskResponse(task=task_to_proto(task))

    async def ListTasks(
        self, request: tasks_pb2.ListTasksRequest, context: Context
    ) -> tasks_pb2.ListTasksResponse:
        async with _status_for_errors(context):
            try:
                status = status_filter(request.status)
            except ValueError as error:
                raise InvalidQuery(str(error)) from None
            tasks = await self._reader.list_tasks(status=status, limit=request.limit)
        return tasks_pb2.ListTasksResponse(tasks=[task_to_proto(task) for task in tasks])

    async def ListTaskEvents(
        self, request: tasks_pb2.ListTaskEventsRequest, context: Context
    ) -> tasks_pb2.ListTaskEventsResponse:
        async with _status_for_errors(context):
            events = await self._reader.task_events(parse_task_id(request.task_id))
        return tasks_pb2.ListTaskEventsResponse(events=[event_to_proto(event) for event in events])


class GrpcServer:
    """The grpc.aio server with TaskService, reflection and health, on the running event loop."""

    def __init__(self, submitter: TaskSubmitter, reader: TaskReader) -> None:
        # Without SO_REUSEPORT a port already in use fails start-up instead of being shared.
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._health = health.aio.HealthServicer()
        tasks_pb2_grpc.add_TaskServiceServicer_to_server(
            TaskServiceApi(submitter, reader), self._server
        )
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
