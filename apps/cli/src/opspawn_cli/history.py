"""Reading history from the events stream: a task as of a point, exports, and a live tail.

All three read the stream itself (the source of truth), not the read model, so they work while
the read model is being rebuilt and show events the projection stepped over.

- :func:`task_as_of` folds one task's events up to a stream sequence, or up to a time (events
  whose ``occurred_at`` is not after it), with the same :func:`~opspawn_contracts.task.fold`
  the projection uses.
- :func:`export` yields stored events as JSON-ready records: one task's whole history, or every
  event stored in a time range.
- :func:`tail` follows the stream live, filtered by task and/or event type (the filter is a
  subject, so the server does the filtering).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from nats.aio.msg import Msg
from nats.js import JetStreamContext

from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskView
from opspawn_messaging.event_log import EventLog
from opspawn_messaging.stream_reading import read_stream


@dataclass(frozen=True, slots=True)
class AsOf:
    task: TaskView | None
    """The task's state then; ``None`` if it had not been submitted yet."""
    last_sequence: int | None
    """The sequence of the last event folded in (``None``: none was)."""
    events: int


async def task_as_of(
    js: JetStreamContext,
    subjects: Subjects,
    task_id: UUID,
    *,
    sequence: int | None = None,
    at: datetime | None = None,
) -> AsOf:
    """The task's state after its events up to ``sequence`` or ``at`` (both: either bound)."""
    history = await EventLog(js, subjects).task_history(task_id)
    then = history.until(sequence=sequence, at=at)
    return AsOf(then.state(), then[-1].sequence if then else None, len(then))


def record(message: Msg) -> dict[str, Any]:
    """A stored event as an export line: position, subject, storage time and the event as
    stored (or, for a payload that is not JSON, its base64)."""
    metadata = message.metadata
    line: dict[str, Any] = {
        "sequence": metadata.sequence.stream,
        "subject": message.subject,
        "stored_at": metadata.timestamp.isoformat(),
    }
    try:
        line["event"] = json.loads(message.data)
    except ValueError:
        line["event"] = None
        line["payload_base64"] = base64.b64encode(message.data).decode()
    return line


async def export(
    js: JetStreamContext,
    subjects: Subjects,
    *,
    task_id: UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """One task's events (``task_id``), or every event stored from ``since`` until ``until``."""
    subject = subjects.all_events if task_id is None else subjects.task_events(task_id)
    messages = read_stream(js, subjects.events_stream, subject, start_time=since)
    async with contextlib.aclosing(messages):
        async for message in messages:
            if until is not None and message.metadata.timestamp > until:
                return
            yield record(message)


def tail_subject(subjects: Subjects, *, task_id: UUID | None, event_type: str | None) -> str:
    task = "*" if task_id is None else str(task_id)
    kind = "*" if event_type is None else event_type
    if kind != "*":
        subjects.events_of_type(kind)  # validates the token
    return f"{subjects.prefix}.events.task.{task}.{kind}"


async def tail(
    js: JetStreamContext,
    subjects: Subjects,
    *,
    task_id: UUID | None = None,
    event_type: str | None = None,
    from_sequence: int | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Events as they are stored (from ``from_sequence``, default: only new ones), forever."""
    if from_sequence is None:
        from_sequence = (await js.stream_info(subjects.events_stream)).state.last_seq + 1
    subject = tail_subject(subjects, task_id=task_id, event_type=event_type)
    messages = read_stream(
        js, subjects.events_stream, subject, start_sequence=from_sequence, follow=True
    )
    async with contextlib.aclosing(messages):
        async for message in messages:
            yield record(message)
