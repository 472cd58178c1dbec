"""The projection: every event into the read model, in stream order, each exactly once."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_contracts.events import (
    AgentStepCompleted,
    AgentStepCompletedData,
    Event,
    TaskCompleted,
    TaskCompletedData,
    TaskFailed,
    TaskFailedData,
    TaskStarted,
    TaskStartedData,
    TaskSubmitted,
    TaskSubmittedData,
    ToolCallCompleted,
    ToolCallCompletedData,
    ToolCallRequested,
    ToolCallRequestedData,
)
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus
from opspawn_messaging.event_log import EventLog
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.queries import ReadModel
from scheduler.projection import Projection, TaskProjector

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _lifecycle(task_id: UUID, *, outcome: str = "completed") -> list[Event]:
    """A task's whole story, one second per event, ending as ``outcome``."""
    correlation = uuid4()

    def at(second: int) -> dict[str, Any]:
        return {
            "task_id": task_id,
            "correlation_id": correlation,
            "occurred_at": T0 + timedelta(seconds=second),
        }

    call = {"attempt": 1, "step_index": 0, "call_id": "c1", "tool": "math.add"}
    story: list[Event] = [
        TaskSubmitted(
            **at(0), data=TaskSubmittedData(task_type="agent_run", input_data={"goal": "add"})
        ),
        TaskStarted(**at(1), data=TaskStartedData(attempt=1, runner_id="runner-1")),
        ToolCallRequested(**at(2), data=ToolCallRequestedData(**call, arguments={"a": 2, "b": 3})),
        ToolCallCompleted(
            **at(3), data=ToolCallCompletedData(**call, ok=True, result=5, duration_ms=0.4)
        ),
        AgentStepCompleted(
            **at(4), data=AgentStepCompletedData(attempt=1, step_index=0, tool_call_ids=["c1"])
        ),
    ]
    if outcome == "completed":
        story.append(
            TaskCompleted(**at(5), data=TaskCompletedData(attempt=1, output_data={"result": 5}))
        )
    else:
        story.append(
            TaskFailed(
                **at(5),
                data=TaskFailedData(
                    attempt=1, error_message="step 2: kaput", output_data={"steps": [5]}
                ),
            )
        )
    return story


async def _append_all(log: EventLog, events: list[Event], *, after: int = 0) -> list[int]:
    """Append one task's events as a runner would (optimistic); returns their sequences."""
    sequences: list[int] = []
    for event in events:
        after = await log.append(event, expected_version=after)
        sequences.append(after)
    return sequences


async def _snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    """Every read-model row with its ``xmin``, which changes whenever a row is rewritten."""
    queries = {
        "tasks": "SELECT xmin::text AS version, * FROM tasks ORDER BY task_id",
        "task_events": "SELECT xmin::text AS version, * FROM task_events ORDER BY sequence",
        "checkpoints": "SELECT xmin::text AS version, * FROM projection_checkpoints",
    }
    async with engine.connect() as connection:
        return {
            table: [tuple(row) for row in (await connection.execute(text(query))).all()]
            for table, query in queries.items()
        }


async def _apply(
    engine: AsyncEngine, projector: TaskProjector, sequence: int, event: Event
) -> bool:
    async with engine.begin() as connection:
        return await projector.apply(connection, sequence, event)


@pytest.mark.parametrize("outcome", ["completed", "failed"])
async def test_a_whole_lifecycle_is_projected_in_stream_order(
    jetstream: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    projection: Projection,
    outcome: str,
) -> None:
    task_id = uuid4()
    events = _lifecycle(task_id, outcome=outcome)

    sequences = await _append_all(EventLog(jetstream, subjects), events)
    await projection.wait_for(sequences[-1], timeout=10)

    read_model = ReadModel(engine)
    task = await read_model.get_task(task_id)
    assert task is not None
    assert (task.task_type, task.input_data) == ("agent_run", {"goal": "add"})
    assert (task.created_at, task.updated_at) == (T0, T0 + timedelta(seconds=5))
    if outcome == "completed":
        assert (task.status, task.output_data, task.error_message) == (
            TaskStatus.COMPLETED,
            {"result": 5},
            None,
        )
    else:
        assert (task.status, task.output_data, task.error_message) == (
            TaskStatus.FAILED,
            {"steps": [5]},
            "step 2: kaput",
        )
    records = await read_model.task_events(task_id)
    assert [record.sequence for record in records] == sequences
    assert [record.event_id for record in records] == [event.event_id for event in events]
    assert [record.event_type for record in records] == [event.event_type for event in events]
    assert [record.payload for record in records] == [
        event.model_dump(mode="json") for event in events
    ]
    assert await read_model.checkpoint(subjects.events_stream) == sequences[-1]
    async with engine.connect() as connection:
        last = await connection.scalar(
            text("SELECT last_sequence FROM tasks WHERE task_id = :id"), {"id": task_id}
        )
    assert last == sequences[-1]


async def test_applying_an_event_again_changes_nothing(engine: AsyncEngine) -> None:
    """Idempotency: nothing is written a second time, so no row's version (xmin) moves."""
    projector = TaskProjector("EVENTS")
    submitted, started, *_, completed = _lifecycle(uuid4())
    assert await _apply(engine, projector, 1, submitted)
    assert await _apply(engine, projector, 2, started)
    before = await _snapshot(engine)
    assert [len(rows) for rows in before.values()] == [1, 2, 1]

    assert not await _apply(engine, projector, 2, started)
    assert not await _apply(engine, projector, 1, submitted)
    # What counts is the position, not the content: any event at an applied sequence is ignored.
    assert not await _apply(engine, projector, 2, completed)

    assert await _snapshot(engine) == before
    read_model = ReadModel(engine)
    task = await read_model.get_task(submitted.task_id)
    assert task is not None
    assert (task.status, task.updated_at) == (TaskStatus.RUNNING, started.occurred_at)
    assert await read_model.checkpoint("EVENTS") == 2


async def test_the_same_event_stored_again_later_is_not_applied_twice(
    engine: AsyncEngine,
) -> None:
    """A producer republished an event after the dedup window: it is indexed once, folded once."""
    projector = TaskProjector("EVENTS")
    submitted, started, *_ = _lifecycle(uuid4())
    assert await _apply(engine, projector, 1, submitted)
    assert await _apply(engine, projector, 2, started)
    before = await _snapshot(engine)

    assert await _apply(engine, projector, 3, started)

    after = await _snapshot(engine)
    assert (after["tasks"], after["task_events"]) == (before["tasks"], before["task_events"])
    assert await ReadModel(engine).checkpoint("EVENTS") == 3


async def test_two_projections_of_one_stream_apply_each_event_once(
    jetstream: JetStreamContext,
    subjects: Subjects,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two schedulers follow the same stream into one database: the checkpoint lock decides."""
    caplog.set_level(logging.WARNING, logger="scheduler")
    engines = [create_engine(database_url, pool_size=2) for _ in range(2)]
    projections = [Projection(engine, jetstream, subjects) for engine in engines]
    stop = asyncio.Event()
    loops = [asyncio.create_task(projection.run(stop)) for projection in projections]
    try:
        log = EventLog(jetstream, subjects)
        tasks = [uuid4() for _ in range(5)]
        appended = await asyncio.gather(*(_append_all(log, _lifecycle(task)) for task in tasks))
        last = max(sequence for sequences in appended for sequence in sequences)
        for projection in projections:
            await projection.wait_for(last, timeout=15)
    finally:
        stop.set()
        await asyncio.gather(*loops)
        for engine in engines:
            await engine.dispose()

    engine = create_engine(database_url, pool_size=1)
    snapshot = await _snapshot(engine)
    read_model = ReadModel(engine)
    assert len(snapshot["task_events"]) == last == 30
    assert [row[1] for row in snapshot["task_events"]] == list(range(1, last + 1))
    for task in tasks:
        view = await read_model.get_task(task)
        assert view is not None
        assert view.status is TaskStatus.COMPLETED
    assert await read_model.checkpoint(subjects.events_stream) == last
    await engine.dispose()
    # The scheduler's own records only: a task another test left behind may log meanwhile.
    assert not [
        record
        for record in caplog.records
        if record.name.startswith("scheduler") and record.levelno >= logging.WARNING
    ]


async def test_invalid_events_are_stepped_over_and_the_next_one_is_projected(
    jetstream: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    projection: Projection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="scheduler")
    log = EventLog(jetstream, subjects)
    poison_task = uuid4()

    async def publish_raw(payload: bytes) -> int:
        ack = await jetstream.publish(
            subjects.event(poison_task, "TaskSubmitted"),
            payload,
            stream=subjects.events_stream,
        )
        return ack.seq

    not_json = await publish_raw(b"\x00\xffnot an event")
    no_data = await publish_raw(
        b'{"event_type": "TaskSubmitted", "task_id": "%s", "correlation_id": "%s"}'
        % (str(poison_task).encode(), str(uuid4()).encode())
    )
    # Valid to pydantic, refused by Postgres: a NUL character cannot be stored in jsonb or text.
    unstorable = await log.append(
        TaskSubmitted(
            task_id=uuid4(),
            correlation_id=uuid4(),
            data=TaskSubmittedData(task_type="agent_run", input_data={"text": "nul\x00"}),
        )
    )
    good_task = uuid4()
    [good] = await _append_all(log, _lifecycle(good_task)[:1])

    await projection.wait_for(good, timeout=10)

    read_model = ReadModel(engine)
    assert await read_model.checkpoint(subjects.events_stream) == good
    assert (await read_model.get_task(good_task)) is not None
    snapshot = await _snapshot(engine)
    assert [row[1] for row in snapshot["task_events"]] == [good]
    assert len(snapshot["tasks"]) == 1
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 3
    assert f"event at sequence {not_json} " in errors[0]
    assert f"event at sequence {no_data} " in errors[1]
    assert "data: Field required" in errors[1]
    assert f"event at sequence {unstorable} cannot be stored" in errors[2]


async def test_the_projection_reconnects_when_postgres_ends_its_session(
    jetstream: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    projection: Projection,
) -> None:
    """The projection writes through a connection of its own, outside the engine's pool: when
    PostgreSQL ends that session (a restart, an administrator), the projection opens a new one
    (at once if the loss was noticed, else after the next batch fails) and skips nothing."""
    sessions = text(
        "SELECT pid FROM pg_stat_activity "
        "WHERE application_name = 'opspawn-projection' AND datname = current_database()"
    )
    log = EventLog(jetstream, subjects)
    first, second = uuid4(), uuid4()
    await projection.wait_for((await _append_all(log, _lifecycle(first)))[-1], timeout=10)
    async with engine.connect() as connection:
        ended = (await connection.execute(sessions)).scalars().all()
        await connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": ended[0]})
    assert len(ended) == 1

    last = (await _append_all(log, _lifecycle(second)))[-1]
    await projection.wait_for(last, timeout=10)

    read_model = ReadModel(engine)
    for task_id in (first, second):
        task = await read_model.get_task(task_id)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED
    async with engine.connect() as connection:
        indexed = await connection.scalar(text("SELECT count(*) FROM task_events"))
        now = (await connection.execute(sessions)).scalars().all()
    assert indexed == 2 * len(_lifecycle(first))
    assert projection.stats.events_stepped_over == 0
    assert len(now) == 1
    assert now != ended
