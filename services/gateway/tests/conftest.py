"""Fixtures for the gateway's tests: the gateway running in-process on real NATS and Postgres.

The scheduler is not part of these tests; :class:`SchedulerStandIn` plays its role the way the
real one does: it takes commands off the commands stream, appends events to the events stream,
and projects them into the read model (the tests may write the database; the gateway never does).

Authentication is on, as in production: ``http`` and ``task_stub`` carry an API key of tenant
``acme`` (``api_key``); ``other_key`` belongs to tenant ``globex``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import grpc
import httpx
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from opspawn.v1 import tasks_pb2_grpc
from opspawn_contracts.commands import Command, SubmitTask, decode_command
from opspawn_contracts.events import (
    Event,
    TaskCompleted,
    TaskCompletedData,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
)
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskView, evolve
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.event_log import EventLog
from opspawn_readmodel.announcements import announce_new_tasks
from opspawn_readmodel.api_keys import ApiKeyStore
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.queries import ReadModel
from opspawn_readmodel.tables import task_events, tasks


class SchedulerStandIn:
    def __init__(self, js: JetStreamContext, subjects: Subjects, engine: AsyncEngine) -> None:
        self._js = js
        self._subjects = subjects
        self._engine = engine
        self._log = EventLog(js, subjects)
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def next_any_command(self, timeout: float = 10.0) -> tuple[Command, Msg]:
        """The next command on the commands stream, and the stored message (subject, headers)."""
        if self._subscription is None:
            self._subscription = await self._js.pull_subscribe(
                self._subjects.all_commands, stream=self._subjects.commands_stream
            )
        (message,) = await self._subscription.fetch(1, timeout=timeout)
        await message.ack()
        return decode_command(message.data), message

    async def next_command(self, timeout: float = 10.0) -> tuple[SubmitTask, Msg]:
        """The next command, which must be a submit."""
        command, message = await self.next_any_command(timeout)
        assert isinstance(command, SubmitTask), command
        return command, message

    def submitted(self, command: SubmitTask, *, later: float = 1.0) -> TaskSubmitted:
        return TaskSubmitted(
            task_id=command.task_id,
            correlation_id=command.correlation_id,
            causation_id=command.command_id,
            occurred_at=command.issued_at + timedelta(seconds=later),
            data=TaskSubmittedData(
                task_type=command.task_type,
                input_data=command.input_data,
                tenant=command.tenant,
                idempotency_key=command.idempotency_key,
                request_hash=command.request_hash,
                options=command.options,
            ),
        )

    async def project(self, *events: Event, announce: bool = True) -> list[int]:
        """Append ``events`` to the events stream, then apply them to the read model in one
        transaction that announces the new tasks (unless told not to), as the scheduler's
        projection does; returns their stream sequences."""
        sequences = [await self._log.append(event) for event in events]
        read_model = ReadModel(self._engine)
        states: dict[UUID, TaskView | None] = {}
        for event in events:
            if event.task_id not in states:
                states[event.task_id] = await read_model.get_task(event.task_id)
        async with self._engine.begin() as connection:
            for sequence, event in zip(sequences, events, strict=True):
                state = states[event.task_id] = evolve(states[event.task_id], event)
                await connection.execute(
                    insert(task_events).values(
                        sequence=sequence,
                        task_id=event.task_id,
                        event_id=event.event_id,
                        event_type=event.event_type,
                        schema_version=event.schema_version,
                        occurred_at=event.occurred_at,
                        payload=event.model_dump(mode="json"),
                    )
                )
                if state is None:
                    continue
                row = {
                    **state.model_dump(mode="python"),
                    "status": state.status.value,
                    "last_sequence": sequence,
                }
                await connection.execute(
                    insert(tasks)
                    .values(**row)
                    .on_conflict_do_update(index_elements=[tasks.c.task_id], set_=row)
                )
            if announce:
                await announce_new_tasks(
                    connection, (e.task_id for e in events if isinstance(e, TaskSubmitted))
                )
        return sequences

    async def submit_and_start(self, command: SubmitTask, *, later: float = 1.0) -> list[Event]:
        """Project the command's TaskSubmitted and a TaskStarted ``later`` seconds after it."""
        submitted = self.submitted(command, later=later)
        started = TaskStarted(
            task_id=command.task_id,
            correlation_id=command.correlation_id,
            causation_id=submitted.event_id,
            occurred_at=submitted.occurred_at + timedelta(seconds=later),
            data=TaskStartedData(attempt=1, runner_id="runner-test"),
        )
        await self.project(submitted, started)
        return [submitted, started]

    async def complete(self, command: SubmitTask, output: dict[str, Any]) -> TaskCompleted:
        """Project TaskCompleted after :meth:`submit_and_start`'s events."""
        completed = TaskCompleted(
            task_id=command.task_id,
            correlation_id=command.correlation_id,
            occurred_at=command.issued_at + timedelta(seconds=3),
            data=TaskCompletedData(attempt=1, output_data=output),
        )
        await self.project(completed)
        return completed


TENANT = "acme"
OTHER_TENANT = "globex"


class _Bearer:
    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def _with_key(self, details: Any) -> Any:
        metadata = tuple(details.metadata or ()) + self._metadata
        return details._replace(metadata=metadata)


class _UnaryBearer(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)


class _StreamBearer(_Bearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_key(details), request)


def bearer_auth(key: str) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding ``authorization: Bearer <key>`` to every call of a channel (grpc.aio
    files each interceptor under one call kind only, hence one per kind)."""
    return [_UnaryBearer(key), _StreamBearer(key)]


async def create_key(database_url: str, tenant: str, *, read_only: bool = False) -> str:
    engine = create_engine(database_url, pool_size=1)
    try:
        issued = await ApiKeyStore(engine).create(tenant, name="test", read_only=read_only)
    finally:
        await engine.dispose()
    return issued.key


@pytest.fixture
async def api_key(database_url: str) -> str:
    return await create_key(database_url, TENANT)


@pytest.fixture
async def other_key(database_url: str) -> str:
    return await create_key(database_url, OTHER_TENANT)


@pytest.fixture
def gateway_settings(
    nats_server: EmbeddedNats, subjects: Subjects, database_url: str
) -> GatewaySettings:
    return GatewaySettings(
        nats_url=nats_server.url,
        subject_prefix=subjects.prefix,
        database_url=database_url,
        http_port=0,
        grpc_port=0,
        read_after_write_timeout_seconds=5.0,
        publish_timeout_seconds=2.0,
        shutdown_grace_seconds=1.0,
    )


@pytest.fixture
async def gateway(gateway_settings: GatewaySettings) -> AsyncIterator[Gateway]:
    async with Gateway(gateway_settings) as running:
        yield running


@pytest.fixture
async def http(gateway: Gateway, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    base_url = f"http://127.0.0.1:{gateway.http_port}"
    headers = {"authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=base_url, timeout=10, headers=headers) as client:
        yield client


@pytest.fixture
async def grpc_channel(gateway: Gateway, api_key: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(
        f"127.0.0.1:{gateway.grpc_port}", interceptors=bearer_auth(api_key)
    ) as channel:
        yield channel


@pytest.fixture
def task_stub(grpc_channel: grpc.aio.Channel) -> tasks_pb2_grpc.TaskServiceAsyncStub:
    return tasks_pb2_grpc.TaskServiceStub(grpc_channel)


@pytest.fixture
async def scheduler(
    jetstream: JetStreamContext, subjects: Subjects, database_url: str
) -> AsyncIterator[SchedulerStandIn]:
    engine = create_engine(database_url, pool_size=2)
    yield SchedulerStandIn(jetstream, subjects, engine)
    await engine.dispose()
