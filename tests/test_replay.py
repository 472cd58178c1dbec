"""Replay tooling against a live read model: rebuild, verify, swap, time travel, export, upcasting.

The live read model is built by the scheduler's own projection from a stream of synthetic but
complete task histories (every event type, superseded attempts, an invalid event, an event in an
old schema version); the tools then rebuild it from the stream and compare.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest
from nats.js import JetStreamContext
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from opspawn_cli import history, replay
from opspawn_contracts.events import CURRENT_SCHEMA_VERSIONS, Event
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskStatus
from opspawn_contracts.upcasting import UPCASTERS
from opspawn_embedded import EmbeddedNats
from opspawn_messaging.event_log import EventLog
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.queries import ReadModel
from scheduler.projection import Projection

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

REPOSITORY = Path(__file__).parents[1]


def _load_stories() -> ModuleType:
    """The benchmark's story generator (``benchmarks`` is not on the tests' import path)."""
    path = REPOSITORY / "benchmarks" / "projection" / "stories.py"
    spec = importlib.util.spec_from_file_location("opspawn_projection_stories", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


stories = _load_stories()
STORIES = 700
"""Enough tasks for over 10,000 events."""


@pytest.fixture
def old_task_started() -> Iterator[None]:
    """An upcaster from a deliberately old TaskStarted (v0 named the runner ``runner``)."""

    @UPCASTERS.register("TaskStarted", from_version=0)
    def _runner_to_runner_id(stored: dict[str, Any]) -> dict[str, Any]:
        data = dict(stored["data"])
        data["runner_id"] = data.pop("runner")
        return {**stored, "schema_version": 1, "data": data}

    yield
    UPCASTERS.unregister("TaskStarted", from_version=0)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=4)
    yield engine
    await engine.dispose()


@pytest.fixture
async def empty_database_url(
    postgres_server_url: str, template_database: str
) -> AsyncIterator[str]:
    """A second database of this test's own, migrated and empty."""
    name = f"{template_database}_r{uuid.uuid4().hex[:6]}"
    admin = create_async_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as connection:
        await connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"'))
    yield make_url(postgres_server_url).set(database=name).render_as_string(hide_password=False)
    async with admin.connect() as connection:
        await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


@pytest.fixture
async def live_projection(
    engine: AsyncEngine, jetstream: JetStreamContext, subjects: Subjects
) -> AsyncIterator[Projection]:
    """The scheduler's projection, following the stream into the live read model."""
    projection = Projection(engine, jetstream, subjects)
    await projection.start()
    stop = asyncio.Event()
    loop = asyncio.create_task(projection.run(stop))
    yield projection
    stop.set()
    await loop


async def _old_started_event(js: JetStreamContext, subjects: Subjects, task_id: UUID) -> int:
    """Store a TaskStarted as an old producer wrote it (schema version 0)."""
    log = EventLog(js, subjects)
    history = await log.task_history(task_id)
    payload = {
        "event_id": str(uuid.uuid4()),
        "event_type": "TaskStarted",
        "schema_version": 0,
        "task_id": str(task_id),
        "occurred_at": "2026-11-25T13:00:00+00:00",
        "correlation_id": str(history[0].event.correlation_id),
        "data": {"attempt": 1, "runner": "old-runner"},
    }
    ack = await js.publish(
        subjects.event(task_id, "TaskStarted"),
        json.dumps(payload).encode(),
        stream=subjects.events_stream,
    )
    return ack.seq


async def _invalid_event(js: JetStreamContext, subjects: Subjects) -> int:
    ack = await js.publish(
        subjects.event(uuid.uuid4(), "TaskStarted"), b"{not json", stream=subjects.events_stream
    )
    return ack.seq


async def test_a_replay_of_over_10000_events_matches_the_live_read_model(
    jetstream: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    live_projection: Projection,
    empty_database_url: str,
    old_task_started: None,
) -> None:
    histories: list[list[Event]] = [stories.story(index) for index in range(STORIES)]
    sequences = await stories.append_stories(EventLog(jetstream, subjects), histories)
    running_task = histories[6][0].task_id  # its story stops mid-attempt
    old = await _old_started_event(jetstream, subjects, histories[6][0].task_id)
    invalid = await _invalid_event(jetstream, subjects)
    last = max(max(found) for found in [*sequences, [old, invalid]])
    assert last >= 10_000
    assert {event.event_type for events in histories for event in events} == set(
        CURRENT_SCHEMA_VERSIONS
    )
    await live_projection.wait_for(last, timeout=120)

    target = create_engine(empty_database_url, pool_size=2)
    try:
        await replay.ensure_empty(target, subjects)
        timed = await replay.rebuild_with_progress(jetstream, subjects, target, show_progress=False)
        comparison = await replay.compare(jetstream, subjects, engine, target)
        rebuilt = ReadModel(target)
        superseded = await _count(target, "SELECT count(*) FROM task_events WHERE superseded")
        stored_version = await _count(  # kept as stored; readers upcast it
            target,
            f"SELECT schema_version + (payload->>'schema_version')::int FROM task_events "
            f"WHERE sequence = {old}",
        )
        upcast = await rebuilt.task_events(histories[6][0].task_id)
    finally:
        await target.dispose()

    assert (timed.position, timed.events) == (last, last)
    assert comparison.identical, comparison.differences
    assert comparison.live.tables["task_events"].rows == last - 1  # the invalid one is skipped
    assert comparison.live.tables["tasks"].rows == len(histories)
    assert comparison.position == last
    assert superseded == sum(1 for index in range(STORIES) if index % 7 == 2) * 3
    assert stored_version == 0
    old_row = next(record for record in upcast if record.sequence == old)
    assert old_row.payload["schema_version"] == CURRENT_SCHEMA_VERSIONS["TaskStarted"]
    data = old_row.payload["data"]
    assert isinstance(data, dict)
    assert data["runner_id"] == "old-runner"
    task = await ReadModel(engine).get_task(running_task)
    assert task is not None
    assert task.status is TaskStatus.RUNNING


async def _count(engine: AsyncEngine, query: str) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(text(query)) or 0)


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from opspawn_cli.main import main; main()", *args,
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_replay_verify_exits_non_zero_and_lists_the_rows_that_differ(
    nats_server: EmbeddedNats,
    jetstream: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    live_projection: Projection,
    database_url: str,
    empty_database_url: str,
    tmp_path: Path,
) -> None:
    histories = [stories.story(index) for index in range(14)]
    sequences = await stories.append_stories(EventLog(jetstream, subjects), histories)
    await live_projection.wait_for(max(max(found) for found in sequences), timeout=30)
    env = {
        "OPSPAWN_NATS_URL": nats_server.url,
        "OPSPAWN_DATABASE_URL": database_url,
        "OPSPAWN_SUBJECT_PREFIX": subjects.prefix,
        "OPSPAWN_DATA_DIR": str(tmp_path),
    }

    code, out, err = await _cli("replay", "--verify", env=env)
    assert code == 0, out + err
    assert "identical" in out
    code, out, err = await _cli("replay", "--into", empty_database_url, env=env)
    assert code == 0, out + err
    assert f"rebuilt database {empty_database_url}" in out
    assert "identical" in out
    code, out, err = await _cli("replay", "--into", empty_database_url, env=env)
    assert code == 1
    assert "the target database is not empty" in err

    tampered = histories[3][0].task_id
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE tasks SET status = 'running' WHERE task_id = :id"), {"id": tampered}
        )
    code, out, err = await _cli("replay", "--verify", env=env)
    assert code == 1, out + err
    assert "DIFFERENT" in out
    assert f"changed:         {tampered} (status)" in out
    assert "tasks: live" in out
    assert "(DIFFERS)" in out


async def test_a_shadow_rebuild_is_swapped_in_while_readers_and_the_projection_run(
    jetstream: JetStreamContext,
    subjects: Subjects,
    engine: AsyncEngine,
    live_projection: Projection,
    database_url: str,
) -> None:
    log = EventLog(jetstream, subjects)
    histories = [stories.story(index) for index in range(21)]
    sequences = await stories.append_stories(log, histories)
    await live_projection.wait_for(max(max(found) for found in sequences), timeout=30)
    damaged = histories[0][0].task_id
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE tasks SET error_message = 'damaged' WHERE task_id = :id"), {"id": damaged}
        )
    reader = ReadModel(engine)
    assert (await reader.get_task(damaged)).error_message == "damaged"  # type: ignore[union-attr]

    await replay.create_shadow_schema(engine, "opspawn_shadow")
    await replay.rebuild(jetstream, subjects, engine, schema="opspawn_shadow")
    before = await replay.compare(
        jetstream, subjects, engine, engine, rebuilt_schema="opspawn_shadow"
    )
    assert list(before.differences["tasks"].changed.values()) == [["error_message"]]
    later = [stories.story(100 + index) for index in range(3)]
    later_sequences = await stories.append_stories(log, later)
    readers = [asyncio.create_task(reader.get_task(damaged)) for _ in range(20)]

    retired = await replay.swap_in(jetstream, subjects, engine, "opspawn_shadow")

    assert all(task is not None for task in await asyncio.gather(*readers))
    after_swap = await reader.get_task(damaged)
    assert after_swap is not None
    assert after_swap.error_message is None
    latest = [stories.story(200 + index) for index in range(2)]
    latest_sequences = await stories.append_stories(log, latest)
    await live_projection.wait_for(max(max(found) for found in latest_sequences), timeout=30)
    for events in [*later, *latest]:
        assert await reader.get_task(events[0].task_id) is not None
    async with replay.scratch_database(database_url) as scratch:
        after = await replay.compare(jetstream, subjects, engine, scratch)
    assert after.identical, after.differences
    assert after.position >= max(max(found) for found in later_sequences)
    async with engine.connect() as connection:
        schemas = (
            await connection.scalars(text("SELECT nspname FROM pg_namespace ORDER BY nspname"))
        ).all()
    assert "opspawn_shadow" not in schemas
    assert retired in schemas


async def test_a_task_as_of_a_sequence_or_time_between_two_of_its_events(
    jetstream: JetStreamContext, subjects: Subjects
) -> None:
    [events] = [stories.story(0, steps=1)]  # submitted, started, 1 step, completed
    [sequences] = await stories.append_stories(EventLog(jetstream, subjects), [events])
    task_id = events[0].task_id
    types = [event.event_type for event in events]
    started, completed = types.index("TaskStarted"), types.index("TaskCompleted")

    submitted_only = await history.task_as_of(jetstream, subjects, task_id, sequence=sequences[0])
    between = await history.task_as_of(
        jetstream, subjects, task_id, sequence=sequences[completed] - 1
    )
    by_time = await history.task_as_of(jetstream, subjects, task_id, at=events[started].occurred_at)
    now = await history.task_as_of(jetstream, subjects, task_id)
    before = await history.task_as_of(jetstream, subjects, task_id, sequence=sequences[0] - 1)

    assert submitted_only.task is not None
    assert submitted_only.task.status is TaskStatus.PENDING
    assert between.task is not None
    assert between.task.status is TaskStatus.RUNNING
    assert between.last_sequence == sequences[completed - 1]
    assert by_time.task is not None
    assert by_time.task.status is TaskStatus.RUNNING
    assert by_time.last_sequence == sequences[started]
    assert now.task is not None
    assert now.task.status is TaskStatus.COMPLETED
    assert before.task is None


async def test_export_and_tail_through_the_cli(
    nats_server: EmbeddedNats,
    jetstream: JetStreamContext,
    subjects: Subjects,
    database_url: str,
    tmp_path: Path,
) -> None:
    log = EventLog(jetstream, subjects)
    [first, second] = [stories.story(0, steps=1), stories.story(3, steps=1)]
    [first_sequences, _] = await stories.append_stories(log, [first, second])
    env = {
        "OPSPAWN_NATS_URL": nats_server.url,
        "OPSPAWN_DATABASE_URL": database_url,
        "OPSPAWN_SUBJECT_PREFIX": subjects.prefix,
        "OPSPAWN_DATA_DIR": str(tmp_path),
    }
    task_id = first[0].task_id

    code, out, err = await _cli("export", "--task", str(task_id), env=env)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["sequence"] for line in lines] == first_sequences
    assert [line["event"]["event_id"] for line in lines] == [str(e.event_id) for e in first]

    code, out, err = await _cli("export", "--since", "2000-01-01T00:00:00Z", env=env)
    assert code == 0, err
    assert len(out.splitlines()) == len(first) + len(second)

    code, out, err = await _cli("task", str(task_id), "--as-of", str(first_sequences[1]), env=env)
    assert code == 0, err
    assert json.loads(out)["task"]["status"] == "running"

    tail = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from opspawn_cli.main import main; main()",
        "tail", "--type", "TaskCompleted", "--from-sequence", "1",
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert tail.stdout is not None
    try:
        line = json.loads(await asyncio.wait_for(tail.stdout.readline(), timeout=20))
        assert line["event"]["event_type"] == "TaskCompleted"
        assert line["event"]["task_id"] == str(task_id)
    finally:
        tail.terminate()
        await tail.wait()
