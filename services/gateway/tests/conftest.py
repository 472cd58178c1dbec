"""Fixtures for the gateway's tests: the gateway running in-process on real NATS and Postgres.

The scheduler is not part of these tests; :class:`SchedulerStandIn` plays its role the way the
real one does: it takes submit requests (and commands off the commands stream), appends events to
the events stream, answers a submit once its TaskSubmitted is stored, and projects the events into
the read model (the tests may write the database; the gateway never does).

Authentication is on, as in production: ``http`` and ``task_stub`` carry an API key of tenant
``acme`` (``api_key``); ``other_key`` belongs to tenant ``globex``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, Literal
from uuid import UUID

import grpc
import httpx
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.app import Gateway
from gateway.settings import GatewaySettings
from opspawn.v1 import tasks_pb2_grpc
from opspawn_contracts.commands import Command, SubmitAnswer, SubmitTask, decode_command
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
from opspawn_messaging.event_log import ConcurrencyConflict, EventLog, StoredEvent
from opspawn_readmodel.api_keys import ApiKeyStore
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.queries import ReadModel
from opspawn_readmodel.tables import task_events, tasks


class SchedulerStandIn:
    def __init__(
        self,
        client: NatsClient,
        js: JetStreamContext,
        subjects: Subjects,
        engine: AsyncEngine,
    ) -> None:
        self._client = client
        self._js = js
        self._subjects = subjects
        self._engine = engine
        self._log = EventLog(js, subjects)
        self._subscription: JetStreamContext.PullSubscription | None = None
        self._requests: asyncio.Queue[Msg] = asyncio.Queue()
        self._unanswered: dict[UUID, Msg] = {}
        self._responder: Subscription | None = None
        self._complete = False
        self.accepted: list[SubmitTask] = []
        """The submissions decided with ``accept_all``, in the order they were stored."""

    async def listen(self, *, accept_all: bool = False, complete: bool = False) -> None:
        """Take submit requests from now on (before the gateway sends any). With
        ``accept_all`` each is decided at once as the scheduler decides it (stored and projected
        if the task has no events; else answered ``already_submitted`` for the same command and
        ``conflict`` for another) and kept in :attr:`accepted`; otherwise the test takes them
        with :meth:`next_command`. ``complete`` also completes each accepted task at once, as
        the fastest runner would."""
        self._complete = complete
        self._responder = await self._client.subscribe(
            self._subjects.submit_requests,
            cb=self._decide if accept_all else self._requests.put,
        )

    async def _decide(self, message: Msg) -> None:
        command = decode_command(message.data)
        assert isinstance(command, SubmitTask), command
        submitted = self.submitted(command, later=0)
        try:
            await self._log.append(submitted, expected_version=0)
        except ConcurrencyConflict:
            first = (await self._log.task_history(command.task_id))[0].event
            outcome: Literal["submitted", "already_submitted", "conflict"] = (
                "already_submitted" if first.causation_id == command.command_id else "conflict"
            )
        else:
            self.accepted.append(command)
            await self._write_rows([(await self._log.task_history(command.task_id))[0]])
            if self._complete:
                await self.complete(command, {"result": None})
            outcome = "submitted"
        answer = SubmitAnswer(outcome=outcome, task_id=command.task_id)
        await message.respond(answer.model_dump_json().encode())

    async def close(self) -> None:
        if self._responder is not None:
            await self._responder.unsubscribe()

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
        """The next submit request, and its message (headers). It is answered ``submitted`` once
        its TaskSubmitted is appended (:meth:`project`), or as told (:meth:`answer`)."""
        message = await asyncio.wait_for(self._requests.get(), timeout)
        command = decode_command(message.data)
        assert isinstance(command, SubmitTask), command
        self._unanswered[command.task_id] = message
        return command, message

    async def answer(self, command: SubmitTask, answer: SubmitAnswer) -> None:
        await self._unanswered.pop(command.task_id).respond(answer.model_dump_json().encode())

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

    async def append(self, *events: Event) -> list[int]:
        """Append ``events`` to the events stream (answering the submit of a TaskSubmitted);
        returns their stream sequences."""
        sequences = [await self._log.append(event) for event in events]
        for event in events:
            request = self._unanswered.pop(event.task_id, None)
            if isinstance(event, TaskSubmitted) and request is not None:
                answer = SubmitAnswer(outcome="submitted", task_id=event.task_id)
                await request.respond(answer.model_dump_json().encode())
        return sequences

    async def project(self, *events: Event) -> list[int]:
        """Append ``events`` (:meth:`append`), then apply them to the read model in one
        transaction, as the scheduler's projection does; returns their stream sequences."""
        sequences = await self.append(*events)
        await self._write_rows(
            [
                StoredEvent(sequence, event)
                for sequence, event in zip(sequences, events, strict=True)
            ]
        )
        return sequences

    async def _write_rows(self, stored: list[StoredEvent]) -> None:
        read_model = ReadModel(self._engine)
        states: dict[UUID, TaskView | None] = {}
        for item in stored:
            if item.event.task_id not in states:
                states[item.event.task_id] = await read_model.get_task(item.event.task_id)
        async with self._engine.begin() as connection:
            for sequence, event in ((item.sequence, item.event) for item in stored):
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
async def accepting_scheduler(
    nats_client: NatsClient, jetstream: JetStreamContext, subjects: Subjects, database_url: str
) -> AsyncIterator[SchedulerStandIn]:
    """A stand-in that decides every submission at once, as the scheduler would."""
    engine = create_engine(database_url, pool_size=1)
    stand_in = SchedulerStandIn(nats_client, jetstream, subjects, engine)
    await stand_in.listen(accept_all=True)
    yield stand_in
    await stand_in.close()
    await engine.dispose()


@pytest.fixture
async def scheduler(
    nats_client: NatsClient, jetstream: JetStreamContext, subjects: Subjects, database_url: str
) -> AsyncIterator[SchedulerStandIn]:
    engine = create_engine(database_url, pool_size=2)
    stand_in = SchedulerStandIn(nats_client, jetstream, subjects, engine)
    await stand_in.listen()
    yield stand_in
    await stand_in.close()
    await engine.dispose()
