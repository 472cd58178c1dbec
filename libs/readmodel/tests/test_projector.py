"""Projectors of one stream that race each other still apply every event exactly once: the
checkpoint moves by compare-and-set, and a batch decided on a stale checkpoint is decided again."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.events import (
    Event,
    ModelReplyRecord,
    StepIntent,
    TaskCompleted,
    TaskCompletedData,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
    ToolCallIntent,
)
from opspawn_readmodel.database import create_engine, open_session
from opspawn_readmodel.projector import Delivered, TaskProjector

pytestmark = pytest.mark.integration

TASKS = 60


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


def _stream() -> list[Delivered]:
    """Three events per task, tasks interleaved, at sequences 1..3·TASKS."""
    histories: list[list[Event]] = []
    for _ in range(TASKS):
        task_id, correlation = uuid4(), uuid4()
        histories.append(
            [
                TaskSubmitted(
                    task_id=task_id,
                    correlation_id=correlation,
                    data=TaskSubmittedData(task_type="agent_run", input_data={"n": 1}),
                ),
                TaskStarted(
                    task_id=task_id,
                    correlation_id=correlation,
                    data=TaskStartedData(attempt=1, runner_id="r"),
                ),
                TaskCompleted(
                    task_id=task_id,
                    correlation_id=correlation,
                    data=TaskCompletedData(attempt=1, output_data={"result": 1}),
                ),
            ]
        )
    interleaved = [history[step] for step in range(3) for history in histories]
    return [Delivered(sequence, event) for sequence, event in enumerate(interleaved, start=1)]


async def _project(engine: AsyncEngine, stream: list[Delivered], seed: int) -> None:
    """One projector: the stream in random-sized batches, from a session of its own."""
    chooser = random.Random(seed)
    projector = TaskProjector("EVENTS")
    session = await open_session(engine)
    try:
        start = 0
        while start < len(stream):
            size = chooser.randint(1, 12)
            await projector.apply_batch(session, stream[start : start + size])
            start += size
            await asyncio.sleep(0)
    finally:
        await session.close()


async def test_racing_projectors_apply_each_event_once(engine: AsyncEngine) -> None:
    stream = _stream()

    await asyncio.gather(*(_project(engine, stream, seed) for seed in range(4)))

    async with engine.connect() as connection:
        indexed = await connection.scalar(text("SELECT count(*) FROM task_events"))
        distinct = await connection.scalar(text("SELECT count(DISTINCT sequence) FROM task_events"))
        statuses = (
            await connection.execute(text("SELECT status, count(*) FROM tasks GROUP BY status"))
        ).all()
        checkpoint = await connection.scalar(
            text("SELECT last_sequence FROM projection_checkpoints WHERE projection = 'EVENTS'")
        )
    assert (indexed, distinct) == (len(stream), len(stream))
    assert [tuple(row) for row in statuses] == [("completed", TASKS)]
    assert checkpoint == len(stream)


async def test_a_batch_behind_the_checkpoint_changes_nothing(engine: AsyncEngine) -> None:
    stream = _stream()
    projector = TaskProjector("EVENTS")
    session = await open_session(engine)
    try:
        first = await projector.apply_batch(session, stream[:10])
        again = await projector.apply_batch(session, stream[5:10])
        rest = await projector.apply_batch(session, stream[5:20])
    finally:
        await session.close()
    assert (first.applied, first.checkpoint, first.moved) == (10, 10, True)
    assert (again.applied, again.checkpoint, again.moved) == (0, 10, False)
    assert (rest.applied, rest.checkpoint) == (10, 20)


async def test_the_tokens_of_recorded_model_replies_are_summed_on_the_task_row(
    engine: AsyncEngine,
) -> None:
    task_id, correlation = uuid4(), uuid4()
    intent = StepIntent(
        step_index=0,
        calls=[ToolCallIntent(call_id="c", tool="math.add", arguments={"a": 1, "b": 1})],
        model_reply=ModelReplyRecord(model="m", input_tokens=100, output_tokens=10),
    )
    final = ModelReplyRecord(model="m", finish_reason="stop", input_tokens=120, output_tokens=3)
    history: list[Event] = [
        TaskSubmitted(
            task_id=task_id,
            correlation_id=correlation,
            data=TaskSubmittedData(task_type="agent_run", input_data={"goal": "add"}),
        ),
        TaskStarted(
            task_id=task_id,
            correlation_id=correlation,
            data=TaskStartedData(attempt=1, runner_id="r", first_step=intent),
        ),
        TaskCompleted(
            task_id=task_id,
            correlation_id=correlation,
            data=TaskCompletedData(attempt=1, output_data={"result": 2}, final_reply=final),
        ),
    ]
    session = await open_session(engine)
    try:
        await TaskProjector("EVENTS").apply_batch(
            session, [Delivered(sequence, event) for sequence, event in enumerate(history, 1)]
        )
    finally:
        await session.close()

    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT input_tokens, output_tokens FROM tasks WHERE task_id = :id"),
                {"id": task_id},
            )
        ).one()
    assert tuple(row) == (220, 13)
