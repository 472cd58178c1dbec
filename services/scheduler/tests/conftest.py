"""Scheduler test fixtures: each part running against the real nats-server and PostgreSQL.

The dispatcher and projection fixtures run one part on its own, in a task of this test's event
loop, and stop it gracefully at teardown (which fails the test if the part failed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.js import JetStreamContext
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.commands import SubmitTask, encode_command
from opspawn_contracts.subjects import Subjects
from opspawn_embedded import EmbeddedNats
from opspawn_readmodel.database import create_engine
from scheduler.dispatch import CommandDispatcher
from scheduler.projection import Projection
from scheduler.settings import SchedulerSettings

SendCommand = Callable[..., Awaitable[int]]
WaitSettled = Callable[..., Awaitable[None]]


@pytest.fixture
def settings(nats_server: EmbeddedNats, subjects: Subjects, database_url: str) -> SchedulerSettings:
    return SchedulerSettings(
        nats_url=nats_server.url, subject_prefix=subjects.prefix, database_url=database_url
    )


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


@pytest.fixture
async def dispatcher(
    jetstream: JetStreamContext, subjects: Subjects
) -> AsyncIterator[CommandDispatcher]:
    dispatcher = CommandDispatcher(jetstream, subjects, poll_interval=0.2)
    await dispatcher.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(dispatcher.run(stop))
    yield dispatcher
    stop.set()
    await loop


@pytest.fixture
async def projection(
    engine: AsyncEngine, jetstream: JetStreamContext, subjects: Subjects
) -> AsyncIterator[Projection]:
    projection = Projection(engine, jetstream, subjects)
    await projection.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(projection.run(stop))
    yield projection
    stop.set()
    await loop


@pytest.fixture
def send_command(jetstream: JetStreamContext, subjects: Subjects) -> SendCommand:
    """Publish a command (or raw bytes) as the gateway does; returns its stream sequence.

    ``msg_id`` defaults to the command id; pass another to store the same command twice.
    """

    async def send(command: SubmitTask | bytes, *, msg_id: str | None = None) -> int:
        if isinstance(command, bytes):
            payload, default_id = command, None
        else:
            payload, default_id = encode_command(command), str(command.command_id)
        headers = {"Nats-Msg-Id": msg_id or default_id} if (msg_id or default_id) else None
        ack = await jetstream.publish(
            subjects.command("submit"),
            payload,
            stream=subjects.commands_stream,
            headers=headers,
        )
        return ack.seq

    return send


@pytest.fixture
def commands_settled(jetstream: JetStreamContext, subjects: Subjects) -> WaitSettled:
    """Wait (bounded) until the scheduler's consumer has settled every command up to ``sequence``.

    Settled means acked or terminated: nothing pending, nothing awaiting an ack.
    """

    async def wait(sequence: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            info = await jetstream.consumer_info(
                subjects.commands_stream, subjects.scheduler_commands_consumer
            )
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            if (floor or 0) >= sequence and not info.num_ack_pending and not info.num_pending:
                return
            assert time.monotonic() < deadline, f"commands not settled: {info}"
            await asyncio.sleep(0.02)

    return wait
