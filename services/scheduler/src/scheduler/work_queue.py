"""Putting a task's later attempt (a retry) on the runner work queue; a first attempt needs no work
item (runners take it from the task's TaskSubmitted).

A work item carries everything a runner needs (so runners never read the read model): the task's
type, input and options with the scheduler's defaults filled in (``max_attempts``), its deadline,
the attempt it is for and the event that caused it. It is published with ``Nats-Msg-Id``
``<task_id>:<attempt>``, so publishing one attempt twice within the duplicate window stores it
once; a copy published later is recognised by the runner (that attempt already started) and
dropped.
"""

from __future__ import annotations

import logging
from uuid import UUID

from nats.js import JetStreamContext

from opspawn_contracts.events import TaskOptions
from opspawn_contracts.subjects import Subjects
from opspawn_contracts.task import TaskView
from opspawn_contracts.work import TaskAssignment
from opspawn_observability.tracing import inject_context

logger = logging.getLogger(__name__)


def resolved_options(options: TaskOptions, default_max_attempts: int) -> TaskOptions:
    if options.max_attempts is not None:
        return options
    return options.model_copy(update={"max_attempts": default_max_attempts})


def assignment_for(
    state: TaskView, *, attempt: int, cause: UUID, correlation_id: UUID, default_max_attempts: int
) -> TaskAssignment:
    """The work item for ``attempt`` of the task whose current state is ``state``."""
    return TaskAssignment(
        task_id=state.task_id,
        task_type=state.task_type,
        input_data=state.input_data,
        attempt=attempt,
        correlation_id=correlation_id,
        causation_id=cause,
        options=resolved_options(state.options, default_max_attempts),
        deadline_at=state.deadline_at,
    )


async def queue(js: JetStreamContext, subjects: Subjects, assignment: TaskAssignment) -> bool:
    """Publish ``assignment`` (with the current trace context); ``False`` if the queue already
    had it (a duplicate)."""
    headers = {"Nats-Msg-Id": assignment.msg_id()}
    inject_context(headers)
    ack = await js.publish(
        subjects.work(assignment.task_type),
        assignment.model_dump_json().encode(),
        stream=subjects.work_stream,
        headers=headers,
    )
    logger.debug(
        "task %s attempt %d %s",
        assignment.task_id,
        assignment.attempt,
        "was already queued" if ack.duplicate else "queued",
    )
    return not ack.duplicate
