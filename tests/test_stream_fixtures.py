"""A stream written by an earlier release replays into the read model that release projected.

Each folder of ``tests/fixtures/event_streams`` holds a stream recorded by
``scripts/record_event_stream.py`` with the code of its day (``read_model.json`` names the commit),
and the checksums of the read model the live projection built from it then (over the columns
it names; older fixtures name none and are compared on the columns before token usage). Here
the stream is stored again, message for message and at the same sequences, and today's replay
must rebuild that read model exactly: old event types and schema versions are still read (upcast
where their shape changed), and nothing about them is projected differently.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from opspawn_cli import replay
from opspawn_contracts.subjects import Subjects
from opspawn_readmodel.checksums import checksums
from opspawn_readmodel.database import create_engine
from opspawn_readmodel.tables import task_events, tasks

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parent / "fixtures" / "event_streams"
RECORDED = sorted(path for path in FIXTURES.iterdir() if path.is_dir())
COLUMNS_BEFORE_TOKEN_USAGE = {
    "tasks": [c.name for c in tasks.columns if c.name not in {"input_tokens", "output_tokens"}],
    "task_events": [c.name for c in task_events.columns],
}
"""The columns a fixture recorded without a column list had (its read model is compared on
those: a column added since has no value in it to compare with)."""


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def _store(jetstream: JetStreamContext, subjects: Subjects, recorded: Path) -> int:
    """Publish the recorded messages in order; each lands at its recorded sequence."""
    last = 0
    for line in (recorded / "events.jsonl").read_text().splitlines():
        message: dict[str, Any] = json.loads(line)
        ack = await jetstream.publish(
            f"{subjects.prefix}.{message['subject']}",
            message["payload"].encode(),
            stream=subjects.events_stream,
        )
        assert ack.seq == message["sequence"], "the fixture's stream must start at sequence 1"
        last = ack.seq
    return last


@pytest.mark.parametrize("recorded", RECORDED, ids=[path.name for path in RECORDED])
async def test_a_recorded_stream_replays_into_the_read_model_it_was_projected_into(
    jetstream: JetStreamContext, subjects: Subjects, engine: AsyncEngine, recorded: Path
) -> None:
    expected = json.loads((recorded / "read_model.json").read_text())
    last = await _store(jetstream, subjects, recorded)

    position = await replay.rebuild(jetstream, subjects, engine)

    async with engine.connect() as connection:
        await connection.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        found = await checksums(
            connection,
            subjects.events_stream,
            columns=expected.get("columns", COLUMNS_BEFORE_TOKEN_USAGE),
        )
        statuses = dict(
            (str(task_id), status)
            for task_id, status in await connection.execute(
                text("SELECT task_id, status FROM tasks")
            )
        )
    assert position == last == expected["checkpoint"]
    assert statuses == expected["statuses"]
    assert {
        name: {"rows": table.rows, "digest": table.digest} for name, table in found.tables.items()
    } == expected["tables"]
    assert found.checkpoint == expected["checkpoint"]
